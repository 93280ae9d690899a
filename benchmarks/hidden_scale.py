"""The scale of each layer's hidden values in finished compression runs (dfm_flax/anatomy.py).

  python -m benchmarks.hidden_scale runs/stability/runs/clock_7x8_lr0.1_s0 \
      runs/stability/runs/clock_7x6_lr0.1_s0

Prints, per run and layer, the spread of the outputs, the largest, their RMS change from
one pixel to the next, and the layer's weight norm. A collapsed run shows hidden values
that change by a large part of a period (or more) per pixel.
"""
import argparse
import sys

import jax.numpy as jnp

from dfm_flax import anatomy, images, restore
from dfm_flax.errors import UserError


def report(workdir: str) -> str:
  config, meta, model = restore.load_model(workdir, expect_task="compress")
  if getattr(model, "count", 0) or config.model.get("kind", "fourier") != "fourier":
    raise UserError(f"{workdir}: only runs of one Fourier net are supported")
  h, w, _ = meta["image_shape"]
  lo, hi = config.model.coord_range
  coords = jnp.asarray(images.pixel_grid(h, w, (lo, hi)))
  scales = anatomy.layer_scales(model.params_list(), coords, ((hi - lo) / w, (hi - lo) / h),
                                method=model.method)
  lines = [f"{workdir} ({config.model.width}x{config.model.depth}, {h}x{w})",
           "layer       std   max_abs  per_pixel  weight_norm"]
  lines += [f"{i + 1:5d} {s['std']:9.3f} {s['max_abs']:9.2f} {s['per_pixel']:10.4f} {s['weight_norm']:12.3f}"
            for i, s in enumerate(scales)]
  return "\n".join(lines)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("workdirs", nargs="+")
  a = p.parse_args()
  try:
    for wd in a.workdirs:
      print(report(wd), flush=True)
  except UserError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  main()
