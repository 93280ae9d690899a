"""Trained compress runs to .dfm files: the training side of the codec.

`fileformat` is the file format alone (bytes <-> weights: what a decoder needs); `sizes`
picks the net and bit depth for a size; this module fits and fine-tunes with the shared
loop, codes, writes each file atomically and measures what it decodes to; `lm_encoding`
fits small images from a learned start with Levenberg-Marquardt steps instead.
"""
from __future__ import annotations

import os
import time

from dfm_flax import files
from dfm_flax.codec import fileformat, grids, sizes
from dfm_flax.data import images
from dfm_flax.errors import UserError
from dfm_flax.loop import train
from dfm_flax.loop.restore import load_model, load_start, numpy_params, saved_config

# The quantisation-aware fine-tune: steps at a tenth of the recipe's lr on the file's grid
# (2,000 decoded better than 300: docs/codec.md#fine-tuning-on-the-grid).
QAT_STEPS = 2000
# The first layer's init variance of `fit_for_bpp`'s last candidate: features that start
# at high frequency, for fine texture whose low frequencies give a small start no gradient
# to grow by (worse on ordinary photographs: docs/recipe.md#what-did-not-work).
HIGH_FREQUENCY_INIT = 1.0


def encode_run(source: str, image, out: str, bits: int, coder: str, qat_steps: int,
               qat_prefix: str | None = None, start: str | None = None) -> dict:
  """Code the net of a finished compress run into `out`; figures of the decoded file."""
  return encode_runs(source, [image], [out], bits, coder, qat_steps, qat_prefix, start)[0]


def encode_runs(source: str, images_in: list, outs: list[str], bits: int, coder: str,
                qat_steps: int, qat_prefix: str | None = None,
                start: str | None = None) -> list[dict]:
  """Code each net of a finished compress run (one, or several fitted at once) into
  its file in `outs`; the quantisation-aware fine-tune runs once for all of them and
  its time is shared equally in each row's encode_s. Its run directory is
  QAT_PREFIX.qatBITS (default: the first output file's path). With `start` (a run whose
  net is the start, `load_start`), each file stores the difference from it, and the
  fine-tune rounds that difference as the file does."""
  config, model = _fitted(source, images_in)
  n = sum(a.size + b.size for a, b in model.params_list()) // max(getattr(model, "count", 0), 1)
  for image in images_in:
    sizes.check_not_too_small(image.shape, n, bits)
  start_params = load_start(start)[1] if start else None
  tic = time.perf_counter()
  if qat_steps and bits != 16:
    config, model = fine_tune(source, f"{qat_prefix or outs[0]}.qat{bits}", bits, qat_steps,
                              start=start)
  shared_s = (time.perf_counter() - tic) / len(outs)
  m = config.model
  rows = []
  for i, (image, out) in enumerate(zip(images_in, outs)):
    tic = time.perf_counter()
    params = model.net_params(i if getattr(model, "count", 0) else None)
    data = fileformat.encode(params, image.shape, m.width, m.depth, tuple(m.coord_range),
                             m.method, bits, coder, start_params)
    rows.append(write_measured(data, image, m, out, start_params, shared_s + time.perf_counter() - tic))
  return rows


def _fitted(source: str, images_in: list):
  """(config, model) of a finished compress run, checked against the images to code."""
  config, meta, model = load_model(source, expect_task="compress")
  shapes = [tuple(s) for s in meta.get("image_shapes") or [meta["image_shape"]]]
  given = [im.shape for im in images_in]
  if len(shapes) == len(given) == 1 and shapes != given:
    raise UserError(f"the net in {source} was fitted to a {list(shapes[0])} image, "
                    f"not to this {list(given[0])} one")
  if shapes != given:
    raise UserError(f"the run in {source} fitted {len(shapes)} images of shapes {shapes}; "
                    f"give those {len(shapes)} images in order (got {len(given)}: {given})")
  return config, model


def decoded_psnr(data: bytes, image, net, start) -> tuple[float, float, tuple]:
  """(PSNR, seconds, (image, decoded) as 8-bit values / 255) of what the file decodes to."""
  h, w, _ = image.shape
  tic = time.perf_counter()
  _, decoded_params = fileformat.decode(data, start)
  decoded = images.render_params(decoded_params, h, w, tuple(net.coord_range), net.method)
  decode_s = time.perf_counter() - tic
  ref, rec = images.to_uint8(image) / 255, images.to_uint8(decoded) / 255
  return images.psnr(ref, rec), decode_s, (ref, rec)


def write_measured(data: bytes, image, net, out: str, start, encode_s: float) -> dict:
  """Write the file and measure what it decodes to (what a reader gets)."""
  h, w, _ = image.shape
  psnr, decode_s, (ref, rec) = decoded_psnr(data, image, net, start)
  files.write_bytes(out, data)
  return {"bytes": len(data), "bpp": 8 * len(data) / (h * w), "psnr": psnr,
          "ssim": images.ssim(ref, rec), "encode_s": encode_s, "decode_s": decode_s}


def encode_to_bpp(source: str, image, out: str, bpp: float, bits: int, coder: str,
                  qat_steps: int, tolerance: float = 0.1, start: str | None = None,
                  grid: str = "uniform") -> tuple[dict, int, str]:
  """Code the run's net into `out` within `tolerance` of `bpp`. On the uniform grid, at
  the bit depth that lands there: first at `bits`, then (at most 3 more tries) at the depth
  the measured file size points to. On the sensitivity grid, with its scale set to the
  size (`encode_sensitive`). Returns (row, bits used, a note when the target could not be
  met)."""
  if grid == "sensitivity":
    return encode_sensitive(source, image, out, bpp, coder, qat_steps, tolerance, start)
  if grid != "uniform":
    raise UserError(f"unknown grid {grid!r}; use one of {', '.join(sizes.GRIDS)}")
  net = saved_config(source).model
  h, w, _ = image.shape
  target = bpp * h * w / 8
  tried = {}  # bits -> row; each try is written beside `out`, the best is moved onto it.
  while bits not in tried:
    tried[bits] = encode_run(source, image, f"{out}.{bits}bit", bits, coder, qat_steps, out, start)
    got = tried[bits]["bytes"]
    if abs(got / target - 1) <= tolerance or bits == 16 or len(tried) == 4:
      break
    bits = sizes.nearest_bits(bits, got, target, net.depth)
  bits = min(tried, key=lambda b: abs(tried[b]["bytes"] / target - 1))
  os.replace(f"{out}.{bits}bit", out)
  for other in tried.keys() - {bits}:
    os.remove(f"{out}.{other}bit")
  row = tried[bits]
  note = ""
  if abs(row["bytes"] / target - 1) > tolerance:
    note = (f"note: no bit depth of this {net.width}x{net.depth} net comes within "
            f"{tolerance:.0%} of {bpp:g} bpp; the nearest is {row['bpp']:.4f} bpp at {bits} bits")
  return row, bits, note


def encode_sensitive(source: str, image, out: str, bpp: float, coder: str, qat_steps: int,
                     tolerance: float = 0.1, start: str | None = None) -> tuple[dict, int, str]:
  """Code the run's net into `out` on the sensitivity grid (dfm_flax/codec/grids.py) at the
  largest size not above `bpp`: the steps are set on the fitted net, the fine-tune (run
  directory OUT.qatBPPbpp: one per size, since its steps are the size's) rounds to those
  same steps, and the file keeps them unless the fine-tune moved its size out of
  `tolerance` (then the scale is set again)."""
  config, model = _fitted(source, [image])
  net = config.model
  h, w, _ = image.shape
  target = bpp * h * w / 8
  start_params = load_start(start)[1] if start else None
  tic = time.perf_counter()
  params = numpy_params(model)
  sensitivity = grids.layer_sensitivity(params, images.pixel_grid(h, w, tuple(net.coord_range)),
                                        net.method)
  data, steps = grids.encode_at_bytes(params, image.shape, net, sensitivity, target,
                                      sizes.GRID_BITS, start_params, coder)
  if qat_steps:
    _, model = fine_tune(source, f"{out}.qat{bpp:g}bpp", sizes.GRID_BITS, qat_steps, steps, start)
    params = numpy_params(model)
    data = fileformat.encode(params, image.shape, net.width, net.depth, tuple(net.coord_range),
                             net.method, sizes.GRID_BITS, coder, start_params, steps)
    if abs(len(data) / target - 1) > tolerance:
      data, _ = grids.encode_at_bytes(params, image.shape, net, sensitivity, target, sizes.GRID_BITS,
                                      start_params, coder)
  row = write_measured(data, image, net, out, start_params, time.perf_counter() - tic)
  note = ""
  if abs(row["bytes"] / target - 1) > tolerance:
    note = (f"note: no grid of this {net.width}x{net.depth} net comes within {tolerance:.0%} of "
            f"{bpp:g} bpp; the nearest is {row['bpp']:.4f} bpp")
  return row, sizes.GRID_BITS, note


def fine_tune(source: str, workdir: str, bits: int, steps: int, grid_steps=(),
              start: str | None = None):
  """Continue the source run for `steps` with the forward pass on the codec's grid: the bit
  depth's, or `grid_steps` (one per layer, the sensitivity grid's); with `start` (a run),
  the grid of the difference from its net, as a difference-coded file stores it."""
  config = saved_config(source)
  config.model.quant_bits = bits
  config.model.quant_steps = tuple(float(s) for s in grid_steps)
  config.model.quant_start = os.path.abspath(start) if start else ""
  config.init_from = os.path.abspath(source)
  config.train.steps = steps
  config.train.checkpoint_every = steps
  config.optim.lr = config.optim.lr * 0.1  # Small steps: stay near the trained float net.
  config.optim.schedule, config.optim.warmup_steps, config.optim.end_lr = "cosine", 0, 0.0
  train.train_and_evaluate(config, workdir)
  config, _, model = load_model(workdir)
  return config, model


def fit_for_bpp(config, workdir: str, image, bpp: float, bits: int, grid: str,
                log=print) -> tuple[str, dict]:
  """Fit the net `size_for_bpp` picks for `bpp` in workdir. On the sensitivity grid, if
  that fit ended collapsed or within images.FLAT_MARGIN_DB of its flat image: when the widest
  candidate (`wide_size_for_bpp`) is wider, fit that too (in workdir.WxD); then (full-length
  fits) fit the last of these again from a first layer at high frequency
  (HIGH_FREQUENCY_INIT; its run directory + ".hf"). Keeps the best. Returns (run directory,
  its metrics), config.model holding the kept net's size (and first-layer init when a fit
  used one). `log` gets one line per further net."""
  config.model.width, config.model.depth = sizes.size_for_bpp(bpp, image.shape, bits, grid)
  metrics = train.train_and_evaluate(config, workdir)
  if grid != "sensitivity":
    return workdir, metrics
  wide = sizes.wide_size_for_bpp(bpp, image.shape)
  flat = images.flat_psnr(image)
  # A fit cut short (train.stop_at) may not have left its flat image yet: judged on
  # collapse alone (a texture's net can still be flat early and fine at the end).
  whole = not config.train.get("stop_at", 0)
  if not (metrics["collapsed"] or (whole and _near_flat(metrics, flat))):
    return workdir, metrics
  base = config.model.first_init_variance
  candidates = [(workdir, metrics, (config.model.width, config.model.depth), base)]
  ended = (f"the {config.model.width}x{config.model.depth} net ended at {metrics['psnr']:.2f} "
           f"dB, {'collapsed' if metrics['collapsed'] else 'near its flat image'} ({flat:.2f} dB)")
  if wide[0] > config.model.width:
    log(f"{ended}: fitting the wider {wide[0]}x{wide[1]} net too")
    config.model.width, config.model.depth = wide
    other = f"{workdir}.{wide[0]}x{wide[1]}"
    candidates.append((other, train.train_and_evaluate(config, other), wide, base))
  # Whether a net leaves its flat image on fine texture is partly a matter of rounding,
  # so full-length fits also try a first layer at high frequency, whatever the wider net did.
  last_run, _, size, _ = candidates[-1]
  if whole:
    what = (f"fitting the {size[0]}x{size[1]} net" if len(candidates) > 1
            else f"{ended}: fitting it")
    log(f"{what} again from a first layer at high frequency "
        f"(init variance {HIGH_FREQUENCY_INIT:g})")
    config.model.first_init_variance = HIGH_FREQUENCY_INIT
    high = f"{last_run}.hf"
    candidates.append((high, train.train_and_evaluate(config, high), size, HIGH_FREQUENCY_INIT))
  run, kept, size, first_variance = max(candidates, key=lambda c: c[1]["psnr"])
  config.model.width, config.model.depth = size  # The config says which net was kept.
  config.model.first_init_variance = first_variance
  return run, kept


def _near_flat(metrics: dict, flat: float) -> bool:
  """The compress task's own verdict (metrics.json `near_flat`); a run finished before it
  had one is judged by the same rule here."""
  return metrics.get("near_flat", metrics["psnr"] < flat + images.FLAT_MARGIN_DB)


