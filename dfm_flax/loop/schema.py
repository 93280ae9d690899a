"""Every config value checked before any work or allocation, in one place.

RULES names each setting the configs use with what it allows; RELATIONS tie settings
together. `check(config)` applies those the config has and refuses the first value that
breaks one, in one line naming the key, its value and what is allowed. Types are
ml_collections' business (a locked config refuses a value of another type).
"""
from __future__ import annotations

import math
from typing import Callable

from dfm_flax.data.datasets import SOURCES
from dfm_flax.errors import UserError
from dfm_flax.loop.guard import MODES as GUARD_MODES
from dfm_flax.loop.logs import WANDB_MODES
from dfm_flax.nets.fourier import METHODS


def _at_least(low) -> tuple[Callable, str]:
  return (lambda v: v >= low), f"at least {low}"


def _positive() -> tuple[Callable, str]:
  return (lambda v: math.isfinite(v) and v > 0), "a positive number"


def _non_negative() -> tuple[Callable, str]:
  return (lambda v: math.isfinite(v) and v >= 0), "a number of at least 0"


def _fraction(closed_low: bool = True) -> tuple[Callable, str]:
  if closed_low:
    return (lambda v: 0 <= v < 1), "in [0, 1)"
  return (lambda v: 0 < v < 1), "in (0, 1)"


def _one_of(options) -> tuple[Callable, str]:
  return (lambda v: v in options), "one of " + ", ".join(map(str, options))


RULES: dict[str, tuple[Callable, str]] = {
    "seed": _at_least(0),
    "train.steps": _at_least(1),
    "train.batch_size": _at_least(1),
    "train.log_every": _at_least(1),
    "train.checkpoint_every": _at_least(1),
    "train.stop_at": _at_least(0),
    "train.eval_chunk": _at_least(1),
    "optim.name": _one_of(("adam", "adamw", "sgd")),
    "optim.lr": _non_negative(),  # 0 holds a net at its start
    "optim.schedule": _one_of(("constant", "linear", "cosine")),
    "optim.warmup_steps": _at_least(0),
    "optim.end_lr": _at_least(0),
    "optim.b1": _fraction(),
    "optim.b2": _fraction(),
    "optim.eps": _positive(),
    "optim.grad_clip": _at_least(0),
    "optim.update_clip": _at_least(0),
    "optim.depth_ref": _at_least(0),
    "model.width": _at_least(1),
    "model.depth": _at_least(1),
    "model.method": _one_of(METHODS),
    "model.init": _one_of(("constant", "fan_in")),
    "model.init_variance": _at_least(0),
    "model.first_init_variance": _at_least(0),
    "model.latent_dim": _at_least(1),
    "model.lam": _at_least(0),
    "model.quant_bits": ((lambda v: v == 0 or v == 16 or 4 <= v <= 12), "0 (off), 16 or 4-12"),
    "guard.mode": _one_of(GUARD_MODES),
    "guard.ratio": ((lambda v: v > 1), "above 1"),
    "guard.patience": _at_least(1),
    "guard.lr_factor": _fraction(closed_low=False),
    "guard.max_recoveries": _at_least(0),
    "data.source": _one_of(SOURCES),
    "data.limit": _at_least(0),
    "data.test_fraction": _fraction(),  # 0: generators hold nothing out
    "eval.fid_samples": _at_least(1),
    "eval.gmm_components": _at_least(1),
    "eval.recon_images": _at_least(0),
    "meta.algorithm": _one_of(("reptile", "maml")),
    "meta.inner_optimizer": _one_of(("sgd", "lm")),
    "meta.inner_steps": _at_least(1),
    "meta.inner_lr": _positive(),
    "meta.tasks_per_step": _at_least(1),
    "meta.crop": _at_least(2),
    "meta.scale": _at_least(1),
    "meta.pool": _at_least(1),
    "meta.eval_crops": _at_least(1),
    "meta.held_out_last": _at_least(1),
    "meta.lm_damping": _positive(),
    "meta.lm_refit": _at_least(0),
    "meta.source": _one_of(("photos", "data")),
    "mesh.data": ((lambda v: v == -1 or v >= 1), "-1 (every device) or at least 1"),
    "dist.num_processes": _at_least(1),
    "dist.timeout_s": _at_least(1),
    "dist.heartbeat_s": _at_least(1),
    "wandb.mode": _one_of(WANDB_MODES),
}


def _get(config, key: str):
  node = config
  for part in key.split("."):
    if not hasattr(node, "keys") or part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()

# (keys, test of their values, what is allowed): checked when the config has every key.
RELATIONS = [
    (("optim.warmup_steps", "train.steps"), lambda w, s: w == 0 or w < s,
     "warm-up shorter than the run"),
    (("train.stop_at", "train.steps"), lambda a, s: a <= s, "a stop no later than train.steps"),
    (("model.coord_range",), lambda r: len(r) == 2 and all(map(math.isfinite, r)) and r[0] < r[1],
     "two finite numbers, low < high"),
]


def present(config) -> list[str]:
  """The RULES keys that `config` has."""
  return [key for key in RULES if _get(config, key) is not _MISSING]


def check(config) -> None:
  """Refuse, in one line, the first value of `config` that breaks a rule or relation."""
  for key, (ok, allowed) in RULES.items():
    value = _get(config, key)
    if value is _MISSING:
      continue
    try:
      good = ok(value)
    except TypeError:
      good = False
    if not good:
      raise UserError(f"{key}={value!r} is not allowed: use {allowed}", exit_code=2)
  for keys, ok, allowed in RELATIONS:
    values = [_get(config, k) for k in keys]
    if any(v is _MISSING for v in values):
      continue
    if not ok(*values):
      shown = ", ".join(f"{k}={v!r}" for k, v in zip(keys, values))
      raise UserError(f"{shown} is not allowed: use {allowed}", exit_code=2)
