"""Steps/s and pixels/s of the shared train step on 1, 2 and 4 devices (one config).

  XLA_FLAGS=--xla_force_host_platform_device_count=4 python -m benchmarks.scaling \
      [--config experiments/compress.py:best] [--steps 30] [--repeats 5]

On a CPU the "devices" share the same cores, so this measures the overhead of the
sharded step, not a speed-up. Medians of `repeats` timings of `steps` steps each.
"""
import argparse
import statistics
import time

import jax

from dfm_flax import tasks
from dfm_flax.files import load_config
from dfm_flax.loop.train import TrainStep, build, place_on_mesh
from dfm_flax.parallel import sharding


def measure(config, devices: int, steps: int, repeats: int):
  """Median steps/s of the train step on `devices` (-1: all, of all processes)."""
  config = config.copy_and_resolve_references()
  config.mesh.data = devices
  task = tasks.make(config)
  model, opt = build(config, task)
  mesh = place_on_mesh(config, model, opt)
  step = TrainStep(task, model, opt)
  batches = [sharding.global_batch(task, s, mesh) for s in range(steps)]
  jax.block_until_ready(step(batches[0]))  # compile
  times = []
  for _ in range(repeats):
    tic = time.perf_counter()
    for b in batches:
      loss, _ = step(b)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - tic)
  return steps / statistics.median(times)


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="experiments/compress.py:best")
  p.add_argument("--steps", type=int, default=30)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  config = load_config(args.config)
  n = len(jax.devices())
  print(f"{args.config}: batch {config.train.batch_size}, {n} {jax.devices()[0].platform} devices visible")
  print(f"{'devices':>7} {'steps/s':>9} {'items/s':>12} {'vs 1':>6}")
  base = None
  for d in (1, 2, 4):
    if d > n:
      break
    rate = measure(config, d, args.steps, args.repeats)
    base = base or rate
    print(f"{d:>7} {rate:>9.2f} {rate * config.train.batch_size:>12,.0f} {rate / base:>5.2f}x")


if __name__ == "__main__":
  main()
