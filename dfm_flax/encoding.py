"""Images to .dfm files from trained compress runs (the training side of the codec).

`encode_run` takes a finished compress run, optionally fine-tunes it with the forward
pass on the codec's quantisation grid (straight-through gradients), codes it, writes
the file atomically and measures what the file decodes to.
"""
from __future__ import annotations

import os
import time


def write_atomically(path: str, data: bytes) -> None:
  tmp = path + ".partial"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def encode_run(source: str, image, out: str, bits: int, coder: str, qat_steps: int) -> dict:
  """Code the net of a finished compress run into `out`; figures of the decoded file."""
  return encode_runs(source, [image], [out], bits, coder, qat_steps)[0]


def encode_runs(source: str, images_in: list, outs: list[str], bits: int, coder: str,
                qat_steps: int) -> list[dict]:
  """Code each net of a finished compress run (one, or several fitted at once) into
  its file in `outs`; the quantisation-aware fine-tune runs once for all of them and
  its time is shared equally in each row's encode_s."""
  from dfm_flax import codec, images
  from dfm_flax.errors import UserError
  from dfm_flax.restore import load_model
  config, meta, model = load_model(source, expect_task="compress")
  shapes = [tuple(s) for s in meta.get("image_shapes") or [meta["image_shape"]]]
  given = [im.shape for im in images_in]
  if len(shapes) == len(given) == 1 and shapes != given:
    raise UserError(f"the net in {source} was fitted to a {list(shapes[0])} image, "
                    f"not to this {list(given[0])} one")
  if shapes != given:
    raise UserError(f"the run in {source} fitted {len(shapes)} images of shapes {shapes}; "
                    f"give those {len(shapes)} images in order (got {len(given)}: {given})")
  n = sum(a.size + b.size for a, b in model.params_list()) // max(getattr(model, "count", 0), 1)
  for h, w, c in shapes:
    if n * (16 if bits == 16 else bits) >= 8 * h * w * c:
      raise UserError(f"the image ({w}x{h}x{c}) is too small for this net: its {n:,} weights "
                      f"at {bits} bits take more bytes than the raw pixels; use a smaller net")
  tic = time.perf_counter()
  if qat_steps and bits != 16:
    config, model = fine_tune(source, outs[0] + ".qat", bits, qat_steps)
  shared_s = (time.perf_counter() - tic) / len(outs)
  m = config.model
  rows = []
  for i, (image, out) in enumerate(zip(images_in, outs)):
    h, w, _ = image.shape
    tic = time.perf_counter()
    params = model.net_params(i if getattr(model, "count", 0) else None)
    data = codec.encode(params, image.shape, m.width, m.depth, tuple(m.coord_range),
                        m.method, bits, coder)
    encode_s = shared_s + time.perf_counter() - tic
    tic = time.perf_counter()
    _, decoded_params = codec.decode(data)  # What a reader gets: the PSNR reported is of this.
    decoded = images.render_params(decoded_params, h, w, tuple(m.coord_range), m.method)
    decode_s = time.perf_counter() - tic
    write_atomically(out, data)
    ref, rec = images.to_uint8(image) / 255, images.to_uint8(decoded) / 255
    rows.append({"bytes": len(data), "bpp": 8 * len(data) / (h * w),
                 "psnr": images.psnr(ref, rec), "ssim": images.ssim(ref, rec),
                 "encode_s": encode_s, "decode_s": decode_s})
  return rows


def fine_tune(source: str, workdir: str, bits: int, steps: int):
  """Continue the source run for `steps` with the forward pass on the codec's grid."""
  from dfm_flax.restore import load_config, load_model
  from dfm_flax.train import train_and_evaluate
  config = load_config(source)
  config.model.quant_bits = bits
  config.init_from = os.path.abspath(source)
  config.train.steps = steps
  config.train.checkpoint_every = steps
  config.optim.lr = config.optim.lr * 0.1  # Small steps: stay near the trained float net.
  config.optim.schedule, config.optim.warmup_steps, config.optim.end_lr = "cosine", 0, 0.0
  train_and_evaluate(config, workdir)
  config, _, model = load_model(workdir)
  return config, model


def size_for_bpp(bpp: float, image_shape, bits: int) -> tuple[int, int]:
  """The largest (width, depth) whose weights, at `bits` each, fit the bpp budget.

  Entropy coding usually shrinks the file a further 10-25%, so the result lands at or
  a little under the target; the printed bpp is the file's real one.
  """
  from dfm_flax import fourier
  from dfm_flax.errors import UserError
  h, w, c = image_shape
  budget_bits = bpp * h * w
  fits = [(fourier.num_params(wd, d, c), wd, d) for wd in range(2, 11) for d in (4, 6, 8)
          if fourier.num_params(wd, d, c) * bits <= budget_bits]
  if not fits:
    raise UserError(f"--bpp {bpp} is below the smallest net (width 2, depth 4) at {bits} bits "
                    f"on a {w}x{h} image; raise --bpp or lower --bits")
  _, width, depth = max(fits)
  return width, depth
