"""The fixed cost of one train step: the loop's TrainStep against the nnx.jit step it
replaced, measured side by side in one process.

  python -m benchmarks.step_overhead [--repeats 7]

Two configs: the smallest net (compress width 2, depth 2, 256 pixels per batch: the
step is almost all overhead) and compress.py:best (width 8, depth 6, 4,096 pixels).
Batches are made beforehand, so only the step is timed. Prints ms per step (median of
--repeats timings, the two forms alternated) and the ratio.
"""
import argparse
import statistics
import time

import jax
from flax import nnx

from dfm_flax import tasks
from dfm_flax.loop.train import TrainStep, build
from experiments import compress


def nnx_jit_step(task):
  """The step as it was before TrainStep: nnx.jit walks the graph on every call."""
  @nnx.jit
  def step(model, optimizer, batch):
    (loss, aux), grads = nnx.value_and_grad(task.loss, has_aux=True)(model, batch)
    optimizer.update(model, grads)
    return loss, aux
  return step


def timed(fn, batches, repeats):
  out = fn(batches[0])
  jax.block_until_ready(out)
  tic = time.perf_counter()
  for b in batches:
    out = fn(b)
  jax.block_until_ready(out)
  return (time.perf_counter() - tic) / len(batches) * 1e3


def measure(config, steps, repeats):
  task = tasks.make(config)
  batches = [task.batch(s) for s in range(steps)]
  model_a, opt_a = build(config, task)
  old = nnx_jit_step(task)
  model_b, opt_b = build(config, task)
  new = TrainStep(task, model_b, opt_b)
  times = {"nnx.jit": [], "TrainStep": []}
  for _ in range(repeats):
    times["nnx.jit"].append(timed(lambda b: old(model_a, opt_a, b), batches, repeats))
    times["TrainStep"].append(timed(new, batches, repeats))
  return {k: statistics.median(v) for k, v in times.items()}


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=7)
  a = p.parse_args()
  small = compress.get_config("smoke")
  small.model.width, small.model.depth, small.train.batch_size = 2, 2, 256
  best = compress.get_config("best")
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}; median of {a.repeats}")
  print("| config | nnx.jit ms/step | TrainStep ms/step | speed-up |")
  print("|---|---|---|---|")
  for name, config, steps in (("smallest (2x2, 256 px)", small, 300),
                              ("compress.py:best (8x6, 4096 px)", best, 30)):
    t = measure(config, steps, a.repeats)
    print(f"| {name} | {t['nnx.jit']:.3f} | {t['TrainStep']:.3f} | "
          f"{t['nnx.jit'] / t['TrainStep']:.2f}x |", flush=True)


if __name__ == "__main__":
  main()
