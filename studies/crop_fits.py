"""Fits of many small crops at once, every crop on its own (vmapped or mapped), from given
starts: the gradient and Levenberg-Marquardt runners, the Adam bar, the codec's recipe as
an optimiser, and what the fits code to. Shared by the meta-learning studies."""
from __future__ import annotations

import argparse
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dfm_flax.codec import fileformat
from dfm_flax.data import photos
from dfm_flax.errors import UserError
from dfm_flax.loop import optim, progress
from dfm_flax.nets import levenberg
from dfm_flax.tasks import compress, meta_learning
from experiments import cli
from experiments.compress import get_config, with_steps


def fit_segments(runner, starts, targets, lrs, checkpoints, state=None, desc=""):
  """Params (leading crop axis) after each checkpoint's number of steps, and the PSNR
  there; every crop fitted independently by `runner` (see `adam_runner`, `lm_runner`) from
  `state` (default: its optimiser's). desc: a progress bar over the steps."""
  tx, run, psnr = runner
  lrs = jnp.asarray(lrs, jnp.float32)
  state = jax.vmap(tx.init)(starts) if state is None else state
  params, done, out = starts, 0, {}
  bar = progress.bar(checkpoints[-1], 0, desc, disable=not desc)
  for k in checkpoints:
    if k > done:
      params, state = run(params, state, targets, lrs, k - done)
      bar.update(k - done)
      done = k
    out[k] = (params, jax.device_get(psnr(params, targets)))
  bar.close()
  return out


def crop_psnr(coords, method):
  """Each crop's PSNR, compiled once."""
  return jax.jit(jax.vmap(lambda p, t: meta_learning.psnr(meta_learning.mse(p, coords, t, method))))


def adam_runner(tx, coords, method):
  """(tx, run, psnr) for one optimiser: run(params, state, targets, lrs, n) takes n steps
  of every crop's fit, per layer lr lrs[l] times tx's update. The step count and the lrs
  are arguments, not constants, so each optimiser compiles once whatever the lr sweep."""
  def advance(p, s, t, lrs, n):
    def step(_, carry):
      p, s = carry
      u, s = tx.update(jax.grad(meta_learning.mse)(p, coords, t, method), s, p)
      u = [(ua * lrs[i], ub * lrs[i]) for i, (ua, ub) in enumerate(u)]
      return optax.apply_updates(p, u), s
    return jax.lax.fori_loop(0, n, step, (p, s))

  return tx, jax.jit(jax.vmap(advance, in_axes=(0, 0, 0, None, None))), crop_psnr(coords, method)


def lm_runner(coords, method, search: bool = False, refit: int = 0):
  """As adam_runner, for Levenberg-Marquardt steps (dfm_flax/nets/levenberg.py): the state is each
  crop's (damping, divisor), `lm_state`, so every damping compiles once and a fit goes on
  where the last segment stopped. The lrs are unused. One crop at a time (lax.map), not
  vmapped: each holds its own Jacobian. search, refit: levenberg.fit's."""
  def advance(p, s, t, n):
    (lam, down) = s
    p, lam, _ = levenberg.fit(p, coords, t, n, method, lam, down, search=search, refit=refit)
    return p, (lam, down)

  run = jax.jit(lambda p, s, t, _lrs, n: jax.lax.map(lambda a: advance(*a, n), (p, s, t)))
  return None, run, crop_psnr(coords, method)


def lm_state(crops: int, damping: float, down: float):
  return np.full(crops, damping, np.float32), np.full(crops, down, np.float32)


def random_starts(model_cfg, channels: int, crops: int, first_seed: int = 10_000):
  """One random start per crop (the compress net's initialisation, seeds first_seed + i),
  stacked along a leading crop axis."""
  nets = [[(np.asarray(x), np.asarray(y)) for x, y in
           compress.one_net(model_cfg, channels, nnx.Rngs(first_seed + i)).net_params()]
          for i in range(crops)]
  return jax.tree.map(lambda *xs: np.stack(xs), *nets)


def adam_bar(adam, starts, targets, dims, lrs: str, checkpoints):
  """(lr, fits) of the best of the comma-separated Adam `lrs` (each per layer lr / 2^m) from
  `starts` after checkpoints[-1] steps: the bar a learned start is measured against. Only
  lrs where no fit diverged compete."""
  sweep = {}
  for lr in (float(x) for x in lrs.split(",")):
    sweep[lr] = fit_segments(adam, starts, targets, [lr / 2**m for m, _ in dims], checkpoints)
    print(f"adam lr {lr:g} / 2^m, random start: {np.nanmean(sweep[lr][checkpoints[-1]][1]):.2f} "
          f"dB after {checkpoints[-1]} steps", flush=True)
  final = {lr: f[checkpoints[-1]][1] for lr, f in sweep.items()}
  best = max(sweep, key=lambda lr: np.mean(final[lr]) if np.all(np.isfinite(final[lr])) else -np.inf)
  return best, sweep[best]


def check_held_out(mc, names: str) -> None:
  """Score on other built-in photographs: refused, in one line, for a run that did not
  train on built-in photographs or for a photograph it trained on."""
  if mc.source != "photos":
    raise UserError("--held_out names built-in photographs; this run trained on "
                    "meta.source=data, whose held-out images are its last ones")
  photos.check_names(meta_learning.photo_names(names))
  if trained := meta_learning.trained_on(mc, names):
    raise UserError(f"--held_out {trained} were in this run's training photographs "
                    f"({mc.photos}): they are not held out")
  mc.held_out = names


def recipe(steps: int):
  """compress.py:best's optimiser and schedule over `steps`, at a peak of 1 (the runner
  scales each layer's update by its lr), and the recipe's peak lr."""
  config = get_config("best")
  with_steps(config, steps)
  cfg, peak = config.optim, config.optim.lr
  cfg.lr, cfg.end_lr = 1.0, cfg.end_lr / peak
  return optim.single(cfg, steps), peak


def coded_psnr(params, target, coords, net, shape, bits, start):
  """(bytes, PSNR) of the file at `bits`; net is the model config (width, depth, method)."""
  data = fileformat.encode(params, shape, net.width, net.depth, tuple(net.coord_range), net.method,
                      bits, "ans", start)
  _, back = fileformat.decode(data, start)
  return len(data), float(meta_learning.psnr(meta_learning.mse(back, coords, target, net.method)))


def rd_points(params, target, coords, net, shape, start):
  """(bytes, PSNR) of the files at 4-12 bits: the fit's rate-distortion curve."""
  return [coded_psnr(params, target, coords, net, shape, bits, start) for bits in range(4, 13)]


def bytes_at(points, goal):
  """Smallest file among `points` decoding within 0.1 dB of `goal`; None if none does."""
  return next((size for size, psnr in points if psnr >= goal - 0.1), None)


def start_parser(doc: str, crops: int) -> argparse.ArgumentParser:
  """The flags every study of a learned start takes: --start, --out, --crops."""
  p = argparse.ArgumentParser(description=doc.splitlines()[0])
  p.add_argument("--start", required=True, help="a finished meta-learning run (experiments/meta.py)")
  p.add_argument("--out", required=True)
  p.add_argument("--crops", type=int, default=crops)
  return p


def run(main) -> None:
  """A study's main, with bad input as one `error:` line (experiments.cli)."""
  cli.run_main(lambda argv: main(), sys.argv)
