"""Optax optimizers and learning-rate schedules chosen by config.

config.optim: name (adam | adamw | sgd), lr (peak), schedule (constant | linear |
cosine), warmup_steps, end_lr (final lr of linear / cosine), b1, b2, eps (Adam's
epsilon; optax's 1e-8 when absent), grad_clip, update_clip (adam: the largest RMS of
each weight array's Adam direction, 0 = off).
`groups` (optional) maps a parameter label to an override ConfigDict of the same
keys: the task labels each parameter and `optax.multi_transform` gives each
group its own optimizer (e.g. the auto-decoder's latent table).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from dfm_flax.errors import UserError


def schedule(cfg, total_steps: int) -> optax.Schedule:
  warmup = int(cfg.get("warmup_steps", 0))
  end_lr = cfg.get("end_lr", 0.0)
  if cfg.schedule == "constant":
    main = optax.constant_schedule(cfg.lr)
  elif cfg.schedule == "linear":
    main = optax.linear_schedule(cfg.lr, end_lr, max(1, total_steps - warmup))
  elif cfg.schedule == "cosine":
    main = optax.cosine_decay_schedule(cfg.lr, max(1, total_steps - warmup),
                                       alpha=end_lr / cfg.lr if cfg.lr else 0.0)
  else:
    raise UserError(f"unknown optim.schedule {cfg.schedule!r}; use constant, linear or cosine")
  if warmup <= 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, cfg.lr, warmup), main], [warmup])


def single(cfg, total_steps: int) -> optax.GradientTransformation:
  lr = schedule(cfg, total_steps)
  adam_args = {"b1": cfg.get("b1", 0.9), "b2": cfg.get("b2", 0.999), "eps": cfg.get("eps", 1e-8)}
  if cfg.name == "adam" and cfg.get("update_clip", 0.0):
    # Adam's direction m / sqrt(v) has an RMS near or below 1 while v keeps up with the
    # gradients; a sudden larger gradient meets a stale v and the step overshoots
    # (StableAdamW, Wortsman et al. 2023). Clipping that RMS per array bounds the step.
    tx = optax.chain(optax.scale_by_adam(**adam_args), optax.clip_by_block_rms(cfg.update_clip),
                     optax.scale_by_learning_rate(lr))
  elif cfg.name == "adam":
    tx = optax.adam(lr, **adam_args)
  elif cfg.name == "adamw":
    tx = optax.adamw(lr, **adam_args, weight_decay=cfg.get("weight_decay", 1e-4))
  elif cfg.name == "sgd":
    tx = optax.sgd(lr, momentum=cfg.get("momentum", 0.9))
  else:
    raise UserError(f"unknown optim.name {cfg.name!r}; use adam, adamw or sgd")
  if cfg.get("grad_clip", 0.0):
    tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip), tx)
  return tx


def scale_by_path(multiplier: Callable[[tuple], float]) -> optax.GradientTransformation:
  """Multiply each parameter's update by multiplier(its pytree path): per-layer lrs."""
  def update(updates, state, params=None):
    del params
    return jax.tree_util.tree_map_with_path(lambda path, u: u * multiplier(path), updates), state
  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


class LrScaleState(NamedTuple):
  lr_scale: jax.Array


def scale_by_lr_scale() -> optax.GradientTransformation:
  """Multiply every update by a scalar kept in the optimizer state (1 at the start).

  The divergence guard (guard.py) lowers it after a collapse. It lives in the state,
  not in the schedule, so that it is checkpointed and a resumed run keeps it; every
  optimizer has it, so that a run with the guard off computes exactly what a run with
  the guard on computes until the guard intervenes (x * 1.0 == x in floating point).
  """
  def init(params):
    del params
    return LrScaleState(jnp.ones((), jnp.float32))

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u: u * state.lr_scale.astype(u.dtype), updates), state
  return optax.GradientTransformation(init, update)


def _lr_scale_var(optimizer):
  state = optimizer.opt_state[-1]
  if not isinstance(state, LrScaleState):
    raise TypeError("this optimizer was not made by optim.build")
  return state.lr_scale


def lr_scale(optimizer):
  """The guard's factor as an array (inside a traced step)."""
  return _lr_scale_var(optimizer)[...]


def get_lr_scale(optimizer) -> float:
  return float(jax.device_get(_lr_scale_var(optimizer)[...]))


def set_lr_scale(optimizer, value: float) -> None:
  var = _lr_scale_var(optimizer)
  old = var[...]
  var[...] = jax.device_put(jnp.asarray(value, old.dtype), old.sharding)


def build(cfg, total_steps: int, labels=None, lr_multiplier=None) -> optax.GradientTransformation:
  """The optimizer for `cfg`.

  labels: a pytree of group names like the params (or a function of the params);
  each group in cfg.groups gets cfg overridden by its own entries.
  lr_multiplier: path -> factor applied to that parameter's update (e.g. the
  compression task's per-layer 1/2^m learning rates).
  Every optimizer ends with `scale_by_lr_scale` (the divergence guard's handle).
  """
  tx = _grouped(cfg, total_steps, labels)
  if lr_multiplier is not None:
    tx = optax.chain(tx, scale_by_path(lr_multiplier))
  return optax.chain(tx, scale_by_lr_scale())  # Last: optimizer.opt_state[-1].


def group(cfg, name: str):
  """(cfg without group `name`, cfg with that group's overrides applied)."""
  rest = cfg.copy_and_resolve_references()
  merged = cfg.copy_and_resolve_references()
  with rest.unlocked(), merged.unlocked():
    del rest.groups[name]
    merged.update(cfg.groups[name])
    del merged["groups"]
  return rest, merged


def _grouped(cfg, total_steps: int, labels) -> optax.GradientTransformation:
  groups = cfg.get("groups", None)
  if labels is None or not groups:
    return single(cfg, total_steps)
  transforms = {"default": single(cfg, total_steps)}
  for name in groups:
    transforms[name] = single(group(cfg, name)[1], total_steps)
  return optax.multi_transform(transforms, labels)
