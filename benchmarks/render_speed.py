"""Rendering speed of a Fourier net (evaluation, `codec decode`): pixels/s of a forward pass
over a whole image, `chunk` pixels at a time, as rendering does it (`fourier.render_apply`:
the product form's features kept) and, as the baseline measured in the same run, as a
training step's forward pass does it (`fourier.net_apply`).

  python -m benchmarks.render_speed [--nets 7x8,10x8] [--chunks 1024,4096,16384,65536]
                                    [--size 512x512] [--repeats 5]

Random weights (the speed does not depend on them); RGB output; median of --repeats
renders, the two settings alternating so that machine noise hits both.
"""
import argparse
import statistics
import time

import jax
import numpy as np

from dfm_flax.data import images
from dfm_flax.nets import fourier


def _apply(params, keep: bool):
  return jax.jit(lambda xy: fourier.net_apply(params, xy, keep_features=keep))


def render_seconds(apply, h, w, chunk) -> float:
  tic = time.perf_counter()
  images.render_fn(apply, h, w, (0.0, 0.5), chunk)
  return time.perf_counter() - tic


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--nets", default="7x8,10x8")
  p.add_argument("--chunks", default="1024,4096,16384,65536")
  p.add_argument("--size", default="512x512", help="WIDTHxHEIGHT of the rendered image")
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  w, h = (int(v) for v in args.size.split("x"))  # WIDTHxHEIGHT, as codec decode --size.
  rng = np.random.default_rng(0)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {w}x{h} pixels, "
        f"median of {args.repeats}")
  print(f"{'net':>5} {'chunk':>6} {'net_apply px/s':>15} {'render_apply px/s':>18} {'speed-up':>9}")
  for net in args.nets.split(","):
    width, depth = (int(v) for v in net.split("x"))
    params = [(rng.normal(0, 0.05, s).astype(np.float32), rng.normal(0, 0.05, s).astype(np.float32))
              for s in fourier.param_shapes(width, depth, 3)]
    applies = {keep: _apply(params, keep) for keep in (False, True)}
    for chunk in (int(c) for c in args.chunks.split(",")):
      for apply in applies.values():
        images.render_fn(apply, h, w, (0.0, 0.5), chunk)  # Compiles this chunk's shapes.
      times = {False: [], True: []}
      for _ in range(args.repeats):
        for keep, apply in applies.items():
          times[keep].append(render_seconds(apply, h, w, chunk))
      off, on = (h * w / statistics.median(times[k]) for k in (False, True))
      print(f"{net:>5} {chunk:>6} {off:>15,.0f} {on:>18,.0f} {on / off:>8.2f}x", flush=True)


if __name__ == "__main__":
  main()
