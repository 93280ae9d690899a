"""The scale of each layer's hidden values in finished compression runs (dfm_flax/nets/anatomy.py).

  python -m studies.hidden_scale runs/stability/runs/clock_7x8_lr0.1_s0 \
      runs/stability/runs/clock_7x6_lr0.1_s0

Prints, per run and layer, the spread of the outputs, the largest, their RMS change from
one pixel to the next, the layer's weight norm, and (Adam runs) the median sqrt(v) of its
weights: the size of their recent gradients, which Adam's eps is compared with. A collapsed
run shows hidden values that change by a large part of a period (or more) per pixel.
"""
import argparse
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dfm_flax.data import images
from dfm_flax.errors import UserError
from dfm_flax.loop import restore
from dfm_flax.loop.checkpoint import Checkpointer
from dfm_flax.nets import anatomy


def report(workdir: str) -> str:
  config, meta, model = restore.load_model(workdir, expect_task="compress")
  if getattr(model, "count", 0) or config.model.get("kind", "fourier") != "fourier":
    raise UserError(f"{workdir}: only runs of one Fourier net are supported")
  h, w, _ = meta["image_shape"]
  lo, hi = config.model.coord_range
  coords = jnp.asarray(images.pixel_grid(h, w, (lo, hi)))
  scales = anatomy.layer_scales(model.params_list(), coords, ((hi - lo) / w, (hi - lo) / h),
                                method=model.method)
  sqrt_v = adam_sqrt_v(workdir, len(scales))
  lines = [f"{workdir} ({config.model.width}x{config.model.depth}, {h}x{w})",
           "layer       std   max_abs  per_pixel  weight_norm  adam_sqrt_v"]
  lines += [f"{i + 1:5d} {s['std']:9.3f} {s['max_abs']:9.2f} {s['per_pixel']:10.4f} {s['weight_norm']:12.3f}"
            f" {v:12.3g}" for i, (s, v) in enumerate(zip(scales, sqrt_v))]
  return "\n".join(lines)


def adam_sqrt_v(workdir: str, depth: int) -> list[float]:
  """Per layer, the median sqrt(v) of Adam's second moment in the latest checkpoint (nan
  for an optimizer without one). Read as saved, whatever the optimizer chain around it."""

  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    step = ckpt.latest_step()
  finally:
    ckpt.close()
  state = ocp.StandardCheckpointer().restore(os.path.join(ckpt.directory, str(step), "optimizer"))
  per_layer = [[] for _ in range(depth)]
  for path, leaf in jax.tree_util.tree_flatten_with_path(state)[0]:
    name = jax.tree_util.keystr(path)
    layer = re.search(r"\['nu'\]\['layers'\]\['(\d+)'\]", name)
    if layer:
      per_layer[int(layer.group(1))].append(np.sqrt(np.ravel(np.asarray(leaf))))
  return [float(np.median(np.concatenate(v))) if v else float("nan") for v in per_layer]


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
