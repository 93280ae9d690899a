"""Time of a crop's fit: Levenberg-Marquardt steps (plain, with levenberg.fit's search, and
searching with its refit of the last layer)
against Adam steps, one crop at a time, as studies.meta_start fits them.

  python -m studies.lm_speed [--nets 4x3,3x3] [--crop 32] [--repeats 5]

Random weights and a random crop (the time does not depend on them); RGB. Each fit is
compiled first, then timed --repeats times, the fits alternating so that machine noise hits
all of them; medians, and each one's ratio to 1,000 Adam steps measured in the same run.
"""
import argparse
import statistics
import time

import jax
import numpy as np
import optax

from dfm_flax.data import images
from dfm_flax.nets import fourier, levenberg
from studies.crop_fits import adam_runner, lm_runner, lm_state

FITS = (("adam", 10), ("adam", 1000), ("lm", 10), ("lm_search", 10), ("lm_refit", 10))


def _fits(width: int, depth: int, crop: int):
  """name -> a function that runs that fit on one crop and waits for it."""
  rng = np.random.default_rng(0)
  params = [(rng.normal(0, 0.2, (1, *s)).astype(np.float32),
             rng.normal(0, 0.2, (1, *s)).astype(np.float32))
            for s in fourier.param_shapes(width, depth, 3)]
  target = rng.uniform(-1, 1, (1, crop * crop, 3)).astype(np.float32)
  coords = jax.numpy.asarray(images.pixel_grid(crop, crop, (0.0, 0.5)))
  lrs = [0.2 / 2**m for m, _ in fourier.layer_dims(width, depth, 3)]
  adam = adam_runner(optax.adam(1.0), coords, "auto")
  runners = {"lm": lm_runner(coords, "auto"), "lm_search": lm_runner(coords, "auto", True),
             "lm_refit": lm_runner(coords, "auto", True, levenberg.REFIT)}
  out = {}
  for name, steps in FITS:
    if name == "adam":
      state = jax.vmap(adam[0].init)(params)
      out[f"{steps} {name}"] = lambda s=state, n=steps: jax.block_until_ready(
          adam[1](params, s, target, lrs, n))
    else:
      run, state = runners[name][1], lm_state(1, 0.1, 1.5)
      out[f"{steps} {name}"] = lambda r=run, s=state, n=steps: jax.block_until_ready(
          r(params, s, target, (), n))
  return out


def main():
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--nets", default="4x3,3x3")
  p.add_argument("--crop", type=int, default=32)
  p.add_argument("--repeats", type=int, default=5)
  a = p.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), one "
        f"{a.crop}x{a.crop} crop, median of {a.repeats}")
  for net in a.nets.split(","):
    width, depth = (int(v) for v in net.split("x"))
    fits = _fits(width, depth, a.crop)
    for fit in fits.values():
      fit()  # Compiles.
    times = {name: [] for name in fits}
    for _ in range(a.repeats):
      for name, fit in fits.items():
        tic = time.perf_counter()
        fit()
        times[name].append(time.perf_counter() - tic)
    base = statistics.median(times["1000 adam"])
    for name, t in times.items():
      m = statistics.median(t)
      print(f"{net} net, {name:>14} steps: {m * 1000:8.1f} ms  ({m / base:.2f}x 1,000 Adam steps)",
            flush=True)


if __name__ == "__main__":
  main()
