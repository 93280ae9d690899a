"""Forward+backward throughput of one Fourier layer (width -> width), both evaluation forms.

  python -m benchmarks.fourier_layer [--points 16384] [--repeats 7] [--widths 4,6,8,10]

Prints pixels/s (median over repeats) for "direct" (cos/sin of k.x for all 2^m k)
and "product" (factored products of m complex exponentials), and their ratio.
Both are timed in the same process, alternating, so machine noise hits both.
"""
import argparse
import statistics
import time

import jax
import jax.numpy as jnp

from dfm_flax.nets import fourier


def step_fn(method):
  def loss(a, b, x):
    return jnp.sum(fourier.layer_apply(x, a, b, method) ** 2)
  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))


def time_once(fn, *args) -> float:
  tic = time.perf_counter()
  jax.block_until_ready(fn(*args))
  return time.perf_counter() - tic


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--points", type=int, default=2**14)
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--widths", default="4,6,8,10")
  args = p.parse_args()
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"{args.points} points, median of {args.repeats}")
  print(f"{'width':>5} {'terms':>6} {'direct px/s':>14} {'product px/s':>14} {'speed-up':>9}")
  for width in (int(w) for w in args.widths.split(",")):
    key = jax.random.key(width)
    x = jax.random.uniform(key, (args.points, width))
    a = jax.random.normal(jax.random.fold_in(key, 1), (2**width, width)) / 2**(width / 2)
    b = jax.random.normal(jax.random.fold_in(key, 2), (2**width, width)) / 2**(width / 2)
    fns = {m: step_fn(m) for m in ("direct", "product")}
    for fn in fns.values():
      time_once(fn, a, b, x)  # compile
    times = {m: [] for m in fns}
    for _ in range(args.repeats):
      for m, fn in fns.items():
        times[m].append(time_once(fn, a, b, x))
    rate = {m: args.points / statistics.median(t) for m, t in times.items()}
    print(f"{width:>5} {2**width:>6} {rate['direct']:>14,.0f} {rate['product']:>14,.0f} "
          f"{rate['product'] / rate['direct']:>8.2f}x")


if __name__ == "__main__":
  main()
