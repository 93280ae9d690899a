"""The codec's two quantisation grids on finished fits: per-layer steps from output
sensitivity (dfm_flax/codec/grids.py) against the uniform grid of each bit depth, at equal bytes.

  python -m studies.grid RUN [RUN ...] [--out DIR]
  python -m studies.grid runs/panel/runs/*/run --out runs/grid      # every panel fit

For each compress run (one image): the files at 5-12 bits on the uniform grid, and for
each of their sizes the sensitivity grid's file of that size (no fine-tune either way).
Prints per run the PSNR of both at the 8-, 9- and 10-bit sizes and the Bjontegaard delta
rate of the sensitivity grid against the uniform one (negative: fewer bytes at equal
PSNR), then the median. With --out: grid.json and grid.md.
"""
import argparse
import os

import numpy as np

from dfm_flax import files
from dfm_flax.codec import fileformat, grids, rate_distortion
from dfm_flax.data import images
from dfm_flax.loop import logs
from dfm_flax.loop.restore import load_model

BITS = range(5, 13)
SHOWN = (8, 9, 10)


def _curves(run: str) -> dict:
  config, _, model = load_model(run, expect_task="compress")
  if getattr(model, "count", 0):
    raise SystemExit(f"error: {run} fits several images at once; give one-image runs")
  net = config.model
  image = images.load_image(config.image) if config.image else images.default_image()
  h, w, _ = image.shape
  params = [(np.asarray(a, np.float32), np.asarray(b, np.float32)) for a, b in model.net_params()]
  ref = images.to_uint8(image) / 255

  def psnr(data):
    _, back = fileformat.decode(data)
    out = images.render_params(back, h, w, tuple(net.coord_range), net.method)
    return images.psnr(ref, images.to_uint8(out) / 255)

  coords = images.pixel_grid(h, w, tuple(net.coord_range))
  sensitivity = grids.layer_sensitivity(params, coords, net.method)
  uniform, sensitive = [], []
  for bits in BITS:
    data = fileformat.encode(params, image.shape, net.width, net.depth, tuple(net.coord_range),
                        net.method, bits, "ans")
    uniform.append((len(data), psnr(data)))
    data, _ = grids.encode_at_bytes(params, image.shape, net, sensitivity, len(data))
    sensitive.append((len(data), psnr(data)))
  return {"run": run, "image": os.path.basename(config.image) or "coffee (built-in)",
          "net": f"{net.width}x{net.depth}", "uniform": uniform, "sensitivity": sensitive,
          "bd_rate": rate_distortion.bd_rate(uniform, sensitive)}


def _table(rows) -> str:
  head = " | ".join(f"{b}-bit size: uniform / sensitivity" for b in SHOWN)
  lines = [f"| run | image | net | {head} | BD-rate |",
           "|---|---|---|" + "---|" * len(SHOWN) + "---|"]
  for r in rows:
    cells = []
    for b in SHOWN:
      i = list(BITS).index(b)
      cells.append(f"{r['uniform'][i][0]:,} B: {r['uniform'][i][1]:.2f} / "
                   f"{r['sensitivity'][i][1]:.2f} dB")
    bd = "-" if r["bd_rate"] is None else f"{r['bd_rate']:+.1%}"
    lines.append(f"| {r['run']} | {r['image']} | {r['net']} | " + " | ".join(cells) + f" | {bd} |")
  bds = [r["bd_rate"] for r in rows if r["bd_rate"] is not None]
  gains = {b: [r["sensitivity"][list(BITS).index(b)][1] - r["uniform"][list(BITS).index(b)][1]
               for r in rows] for b in SHOWN}
  lines += ["", f"{len(rows)} fits. BD-rate of the sensitivity grid against the uniform one: "
            f"median {np.median(bds):+.1%}, range {min(bds):+.1%} to {max(bds):+.1%} "
            f"({len(bds)} defined)." if bds else f"{len(rows)} fits; no BD-rate defined.",
            "At equal bytes, PSNR gained (median, min, max): " + "; ".join(
                f"{b}-bit size {np.median(g):+.2f} dB ({min(g):+.2f}, {max(g):+.2f})"
                for b, g in gains.items()) + "."]
  return "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("runs", nargs="+", help="finished compress runs (one image each)")
  p.add_argument("--out", default="", help="write grid.json and grid.md here")
  a = p.parse_args()
  rows = []
  for run in a.runs:
    rows.append(_curves(run))
    r = rows[-1]
    print(f"{run}: {r['net']} BD-rate "
          + ("-" if r["bd_rate"] is None else f"{r['bd_rate']:+.1%}"), flush=True)
  text = _table(rows)
  print(text)
  if a.out:
    os.makedirs(a.out, exist_ok=True)
    logs.write_json(os.path.join(a.out, "grid.json"), rows)
    files.write_bytes(os.path.join(a.out, "grid.md"), text.encode())


if __name__ == "__main__":
  main()
