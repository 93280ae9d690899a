"""Where a .dfm file could still save bits: an audit of a panel's coded files.

  python -m studies.bits_audit --panel runs/steps20k --images astronaut,camera,moon

For each image's file at --bpp (seed 0, the sensitivity grid; the panel's `file.dfm` and
its fine-tuned net `file.dfm.qatBPPbpp`), three measurements:
  * steps: the sensitivity grid gives each layer one quantisation step (dfm_flax/codec/grids.py).
    Would a step per group of weights in a layer do better? Per group (the popcount of k,
    or popcount and output), the mean output sensitivity; the bits per weight a per-group
    step saves at equal error are 0.5 log2(arithmetic / geometric mean), weighted by size.
  * entropy model: the file's integers coded under an ideal quantised Laplace fitted per
    layer (what the format stores), per (layer, popcount), per (layer, output) and per
    (layer, popcount, output): bytes of the payload, before storing the extra parameters.
  * rate: the fine-tuned net coded again on the sensitivity grid at 90%, 80% and 70% of the
    file's bytes (no new fine-tune): the PSNR each costs.
Prints one block per image and a total.
"""
import argparse
import json
import os

import numpy as np
from scipy.stats import laplace

from dfm_flax.codec import fileformat, grids, sizes
from dfm_flax.data import images
from dfm_flax.errors import UserError
from dfm_flax.loop import restore
from dfm_flax.loop.restore import load_model
from dfm_flax.nets import fourier


def popcounts(rows: int) -> np.ndarray:
  """Popcount of k for each row of a layer (fourier.frequencies' order)."""
  return fourier.frequencies(int(np.log2(rows))).sum(1).astype(int)


def _groups(a: np.ndarray) -> dict:
  """Labels of a layer's stacked (a; b) weights (2 x 2^m rows, n outputs) per grouping."""
  rows, n = a.shape
  pop = np.concatenate([popcounts(rows)] * 2)[:, None] * np.ones((1, n), int)
  out = np.ones((2 * rows, 1), int) * np.arange(n)[None, :]
  return {"layer": np.zeros_like(pop), "layer, popcount": pop, "layer, output": out,
          "layer, popcount, output": pop * 1000 + out}


def _laplace_bits(q: np.ndarray) -> float:
  """Bits of q under the quantised Laplace the codec would fit to it (codec._laplace)."""

  loc, spread = fileformat._laplace(q)
  p = laplace.cdf(q + 0.5, loc, spread) - laplace.cdf(q - 0.5, loc, spread)
  return float(-np.log2(np.maximum(p, 1e-300)).sum())


def entropy_bytes(data: bytes) -> tuple[dict, dict]:
  """(payload bytes per grouping, number of groups) for a .dfm file's own integers."""
  header, params = fileformat.decode(data)
  bits, count = {}, {}
  for (a, b), (step, _, _) in zip(params, fileformat.layer_stats(data, header)):
    q = np.round(np.concatenate([a, b]) / step)
    for name, labels in _groups(a).items():
      for g in np.unique(labels):
        bits[name] = bits.get(name, 0.0) + _laplace_bits(q[labels == g])
        count[name] = count.get(name, 0) + 1
  return {k: v / 8 for k, v in bits.items()}, count


def step_savings(sensitivity, params) -> dict:
  """Bits per weight a per-group step would save over one step per layer, per grouping,
  from each weight's output sensitivity (`grids.weight_sensitivity`)."""
  saved, total = {}, 0
  for s, (a, _) in zip(sensitivity, params):
    total += s.size
    mean = max(s.mean(), 1e-300)
    for name, labels in _groups(a).items():
      groups = [s[labels == g] for g in np.unique(labels)]
      log_geo = sum(x.size * np.log(max(x.mean(), 1e-300)) for x in groups) / s.size
      saved[name] = saved.get(name, 0.0) + s.size * 0.5 * np.log2(mean / np.exp(log_geo))
  return {k: v / total for k, v in saved.items()}


def rate_cost(params, image, net, sensitivity, nbytes: int, fractions=(0.9, 0.8, 0.7)) -> dict:
  """PSNR of the net coded on the sensitivity grid (per-layer `sensitivity`) at each
  fraction of `nbytes`."""
  h, w, _ = image.shape
  ref = images.to_uint8(image) / 255
  out = {}
  for f in (1.0, *fractions):
    data, _ = grids.encode_at_bytes(params, image.shape, net, sensitivity, f * nbytes,
                                    sizes.GRID_BITS, None, "ans")
    _, back = fileformat.decode(data)
    rec = images.render_params(back, h, w, tuple(net.coord_range), net.method)
    out[f] = (len(data), images.psnr(ref, images.to_uint8(rec) / 255))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--panel", required=True, help="a studies.panel output directory")
  p.add_argument("--images", required=True)
  p.add_argument("--bpp", type=float, default=0.3)
  a = p.parse_args()
  totals, groups_total, file_total = {}, {}, 0
  for name in a.images.split(","):
    cell = os.path.join(a.panel, "runs", f"{name}_{a.bpp:g}bpp_s0_sensitivity")
    path, tuned = os.path.join(cell, "file.dfm"), os.path.join(cell, f"file.dfm.qat{a.bpp:g}bpp")
    if not (os.path.exists(path) and os.path.isdir(tuned)):
      raise UserError(f"no coded, fine-tuned file for {name} at {a.bpp:g} bpp in {cell}")
    with open(path, "rb") as f:
      data = f.read()
    payload, count = entropy_bytes(data)
    config, _, model = load_model(tuned)
    image = images.load_image(config.image)
    params = restore.numpy_params(model)
    coords = images.pixel_grid(*image.shape[:2], tuple(config.model.coord_range))
    # One estimate serves both: per weight for the groups, its layer means for the grid
    # (what grids.layer_sensitivity, the codec's, returns from the same draws).
    sensitivity = grids.weight_sensitivity(params, coords, config.model.method)
    saved = step_savings(sensitivity, params)
    layer_means = np.array([x.mean() for x in sensitivity])
    rate = rate_cost(params, image, config.model, layer_means, len(data))
    file_total += len(data)
    for k, v in payload.items():
      totals[k] = totals.get(k, 0.0) + v
      groups_total[k] = groups_total.get(k, 0) + count[k]
    print(f"{name} ({config.model.width}x{config.model.depth}, {len(data):,} bytes):")
    print("  per-group steps would save (bits/weight): "
          + ", ".join(f"{k} {v:.3f}" for k, v in saved.items() if k != "layer"))
    print("  ideal Laplace payload (bytes): "
          + ", ".join(f"{k} {v:,.0f} ({count[k]} groups)" for k, v in payload.items()))
    full = rate[1.0][1]
    print("  coded again at a fraction of its bytes: " + ", ".join(
        f"{f:.0%} {psnr:.2f} dB ({psnr - full:+.2f})" for f, (_, psnr) in rate.items()))
  base = totals["layer"]
  print(f"total: {file_total:,} bytes in {len(a.images.split(','))} files; ideal payload per "
        "grouping " + json.dumps({k: f"{v:,.0f} ({v / base - 1:+.1%}, {groups_total[k]} groups)"
                      for k, v in totals.items()}))


if __name__ == "__main__":
  main()
