"""Adam on only the rows of a latent table that a batch holds (lazy Adam, as auto-decoders
such as DeepSDF train their codes): a step then costs the batch's rows, not the table.

Dense Adam reads and writes the whole table and both its moments every step although
only the batch's rows have a gradient: at 70,000 rows x 55 that is most of a CPU step
(docs/performance.md#the-generative-step). Here the loss is differentiated with respect
to the gathered rows, not the table, and the rows and their moments are scattered back.
Per visited row the arithmetic is optax.adam's (bias correction and schedule by the
global step); a row the batch does not hold stays where it is, where dense Adam would
keep moving it by its decaying momentum.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from dfm_flax.errors import UserError
from dfm_flax.loop import optim

# Every parameter but the table: what the optax optimizer and the gradient cover.
NOT_TABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("latents")))


class RowAdam(nnx.Module):
  """Adam moments of the table (stored as `optimizer.latents`: checkpointed, rolled back
  by the guard and placed on the mesh with the rest of the optimizer's state)."""

  def __init__(self, table: jnp.ndarray, cfg, total_steps: int):
    if cfg.name != "adam" or cfg.get("grad_clip", 0.0) or cfg.get("update_clip", 0.0):
      raise UserError("optim.sparse_latents takes plain Adam for the latent group "
                      "(no grad_clip, no update_clip)")
    self.schedule = optim.schedule(cfg, total_steps)
    self.b1, self.b2 = cfg.get("b1", 0.9), cfg.get("b2", 0.999)
    self.eps = cfg.get("eps", 1e-8)
    self.mu = nnx.OptState(jnp.zeros_like(table))
    self.nu = nnx.OptState(jnp.zeros_like(table))
    self.count = nnx.OptState(jnp.zeros((), jnp.int32))

  def update(self, table: nnx.Param, rows: jnp.ndarray, grads: jnp.ndarray, lr_scale) -> None:
    """table[rows] -= one Adam step from `grads` (the rows' gradients); rows distinct."""
    count = self.count[...]
    t = (count + 1).astype(jnp.float32)
    mu = self.b1 * self.mu[...][rows] + (1 - self.b1) * grads
    nu = self.b2 * self.nu[...][rows] + (1 - self.b2) * grads**2
    direction = (mu / (1 - self.b1**t)) / (jnp.sqrt(nu / (1 - self.b2**t)) + self.eps)
    table[...] = table[...].at[rows].add(-self.schedule(count) * lr_scale * direction)
    self.mu[...] = self.mu[...].at[rows].set(mu)
    self.nu[...] = self.nu[...].at[rows].set(nu)
    self.count[...] = count + 1


def attach(optimizer, table: jnp.ndarray, cfg, total_steps: int) -> None:
  optimizer.latents = RowAdam(table, cfg, total_steps)


def uses_rows(optimizer) -> bool:
  return isinstance(getattr(optimizer, "latents", None), RowAdam)


def step(task, model, optimizer, batch):
  """One training step: optax on every parameter but the table, RowAdam on its rows."""
  rows = batch["index"]

  def loss(model, z):
    return task.loss(model, {**batch, "latents": z})
  (value, aux), (grads, z_grads) = nnx.value_and_grad(
      loss, argnums=(nnx.DiffState(0, NOT_TABLE), 1), has_aux=True)(model, model.latents[...][rows])
  optimizer.update(model, grads)
  optimizer.latents.update(model.latents, rows, z_grads, optim.lr_scale(optimizer))
  return value, aux
