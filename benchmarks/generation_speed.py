"""Training speed of the MNIST generators and the classifier on the same digits: images
per second, beside what their arithmetic needs at this machine's matrix-product rate.

  python -m benchmarks.generation_speed [--repeats 5] [--steps 30] [--images 1000]
                                       [--nets 5x6,6x6]

Models, each at batch 64 on the bundled digits (tiled to --images rows, which sizes the
auto-decoder's latent table): the generative DFM of experiments/mnist.py (auto-decoder)
and with an MLP encoder (--encoder hidden sizes), each in its batched form
(model.method=auto) and in the image-by-image form it replaced (model.method=direct,
the same maths: the step before the change, measured in the same run), the
auto-decoder's table updated by Adam as a whole (before) and by rows (optim.sparse_latents,
mnist.py's default; the same result); the VAE of
experiments/vae_mnist.py; the CNN of experiments/classifier_mnist.py. Each Fourier net
of --nets (WIDTHxDEPTH) adds an auto-decoder row with that net in place of mnist.py's.

Arithmetic: 3x the forward pass's floating-point operations (forward, and a backward
of about twice its cost). For the DFM the forward is counted as the thesis's model
needs it: 2 per decoder weight, and 2 per Fourier weight per pixel (one multiply-add
per term), whatever the form evaluates; for the VAE and the CNN it is XLA's own count
of the forward pass. The roof is the float32 rate of a 1024^3 matrix product measured
here; "x roof" is the step's time over the time that arithmetic needs at that rate.
Memory: XLA's buffers for one step (arguments, outputs, temporaries), from
`memory_analysis` of the compiled step.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import jax
import numpy as np
from flax import nnx

from dfm_flax import tasks
from dfm_flax.data.datasets import BUNDLED_MNIST
from dfm_flax.loop.train import TrainStep, build
from dfm_flax.nets import fourier
from experiments import classifier_mnist, mnist, vae_mnist

BATCH = 64


def matmul_rate(repeats: int) -> float:
  """float32 FLOP/s of a 1024^3 matrix product: the roof the models are held against."""
  a = jax.random.normal(jax.random.key(0), (1024, 1024))
  f = jax.jit(lambda x: x @ x)
  f(a).block_until_ready()
  times = []
  for _ in range(repeats):
    tic = time.perf_counter()
    f(a).block_until_ready()
    times.append(time.perf_counter() - tic)
  return 2 * 1024**3 / statistics.median(times)


def tiled_digits(rows: int, directory: str) -> str:
  """The bundled digits repeated to `rows` images, as an .npz the configs can read."""
  bundled = np.load(BUNDLED_MNIST)
  reps = -(-rows // len(bundled["images"]))
  path = os.path.join(directory, f"digits_{rows}.npz")
  np.savez(path, **{k: np.concatenate([bundled[k]] * reps)[:rows] for k in bundled.files})
  return path


def dfm_forward_flops(task, model, batch) -> float:
  """Per image: 2 per decoder (and encoder) weight, 2 per Fourier weight per pixel."""
  m = task.config.model
  h, w, c = task.image_shape
  weights = fourier.num_params(m.width, m.depth, c)
  dense = [m.latent_dim, *m.decoder_hidden, weights]
  if m.encoder_hidden:
    dense = [h * w * c, *m.encoder_hidden, *dense]
  return 2 * sum(i * o for i, o in zip(dense[:-1], dense[1:])) + 2 * weights * h * w


def xla_forward_flops(task, model, batch) -> float:
  """XLA's count of one forward pass of the task's loss, per image."""
  graphdef, state = nnx.split(model)
  loss = jax.jit(lambda s, b: task.loss(nnx.merge(graphdef, s), b)[0])
  cost = loss.lower(state, batch).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost["flops"]) / BATCH


def measure(config, steps: int, repeats: int, flops_of) -> dict:
  task = tasks.make(config)
  model, optimizer = build(config, task)
  step = TrainStep(task, model, optimizer)
  batches = [task.batch(s) for s in range(steps)]
  forward = flops_of(task, model, batches[0])
  compiled = step.compile(batches[0])
  mem = compiled.memory_analysis()
  mem_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
               if mem is not None else float("nan"))
  jax.block_until_ready(step(batches[0]))
  times = []
  for _ in range(repeats):
    tic = time.perf_counter()
    for b in batches:
      out = step(b)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - tic) / steps)
  return {"ms": 1e3 * statistics.median(times), "train_flops": 3 * forward * BATCH,
          "mem_mib": mem_bytes / 2**20}


def configs(data_path: str, encoder: tuple, nets: list[tuple[int, int]]) -> list:
  """(name, config, forward flops per image, the earlier row it is compared with)."""
  def on_digits(c):
    c.data.source, c.data.name, c.data.dir = "npz", "mnist", data_path
    c.train.batch_size = BATCH
    c.wandb.mode = "disabled"
    return c

  def dfm(method, hidden=(), net=None, sparse=None):
    c = on_digits(mnist.get_config(""))
    c.model.method, c.model.encoder_hidden = method, hidden
    c.model.width, c.model.depth = net or (c.model.width, c.model.depth)
    if sparse is not None or hidden:  # an encoder has no table
      c.optim.sparse_latents = bool(sparse)
    return c
  encoded = f"DFM encoder {'-'.join(map(str, encoder))}"
  others = [(f"DFM auto-decoder, Fourier net {w}x{d}", dfm("auto", net=(w, d)), dfm_forward_flops,
             None) for w, d in nets]
  by_image = "DFM auto-decoder, image by image, Adam on the whole table"
  return [
      (by_image, dfm("direct", sparse=False), dfm_forward_flops, None),
      ("DFM auto-decoder, Adam on the whole table", dfm("auto", sparse=False), dfm_forward_flops,
       by_image),
      ("DFM auto-decoder (mnist.py)", dfm("auto"), dfm_forward_flops, by_image),
      (f"{encoded}, image by image", dfm("direct", encoder), dfm_forward_flops, None),
      (encoded, dfm("auto", encoder), dfm_forward_flops, f"{encoded}, image by image"),
      *others,
      ("VAE (vae_mnist.py)", on_digits(vae_mnist.get_config("")), xla_forward_flops, None),
      ("CNN classifier", on_digits(classifier_mnist.get_config("")), xla_forward_flops, None),
  ]


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--steps", type=int, default=30, help="steps per timing")
  p.add_argument("--images", type=int, default=1000, help="rows of the data (latent table)")
  p.add_argument("--encoder", default="512", help="hidden sizes of the DFM's encoder, e.g. 512,256")
  p.add_argument("--nets", default="", help="more Fourier nets WIDTHxDEPTH, e.g. 5x6,6x6")
  a = p.parse_args()
  encoder = tuple(int(h) for h in a.encoder.split(","))
  nets = [tuple(int(v) for v in n.split("x")) for n in a.nets.split(",") if n]
  roof = matmul_rate(a.repeats)
  cores = len(os.sched_getaffinity(0))
  print(f"jax {jax.__version__} on {jax.devices()[0].platform}, {cores} CPU cores; "
        f"matrix-product roof {roof / 1e9:.1f} GFLOP/s; batch {BATCH}, {a.images:,} images; "
        f"median of {a.repeats} x {a.steps} steps")
  print("| model | ms/step | images/s | arithmetic GFLOP/step | x roof | step memory MiB "
        "| speed-up | over |")
  print("|---|---|---|---|---|---|---|---|")
  with tempfile.TemporaryDirectory() as tmp:
    data_path = tiled_digits(a.images, tmp)
    ms = {}
    for name, config, flops_of, baseline in configs(data_path, encoder, nets):
      r = measure(config, a.steps, a.repeats, flops_of)
      ms[name] = r["ms"]
      speedup = f"{ms[baseline] / r['ms']:.1f}x | {baseline}" if baseline else " | "
      roof_ms = 1e3 * r["train_flops"] / roof
      print(f"| {name} | {r['ms']:.2f} | {BATCH / r['ms'] * 1e3:,.0f} | "
            f"{r['train_flops'] / 1e9:.3f} | {r['ms'] / roof_ms:.1f} | {r['mem_mib']:.1f} | "
            f"{speedup} |", flush=True)


if __name__ == "__main__":
  main()
