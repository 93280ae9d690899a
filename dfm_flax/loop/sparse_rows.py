"""Adam on only the rows of a latent table that a batch holds, with the same result as
Adam on the whole table: a step costs the batch's rows, not the table.

Dense Adam reads and writes the whole table and both its moments every step, although
only the batch's rows have a gradient: at 70,000 rows x 55 that is most of a CPU step
(docs/performance.md#the-generative-step). A row outside the batch has a zero gradient,
so dense Adam only decays its moments and moves it by their decaying ratio; and where a
row sits between its batches changes nothing else in training. So each row records the
step of its last update, and when a batch next holds it (or at the end of training,
`flush`) those skipped steps are applied at once, term by term as Adam would have: the
table and its moments come out as dense Adam's (to float32 rounding). The loss is
differentiated with respect to the gathered rows, not the table. Checkpoints saved
during training hold rows not yet brought up to date (a resumed run applies what they
owe; the last checkpoint is saved after `flush`).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from dfm_flax.errors import UserError
from dfm_flax.loop import optim

# Every parameter but the table: what the optax optimizer and the gradient cover.
NOT_TABLE = nnx.All(nnx.Param, nnx.Not(nnx.PathContains("latents")))
FLUSH_ROWS = 512  # Rows per chunk of the end-of-training flush (bounds its memory).


class RowAdam(nnx.Module):
  """Adam moments of the table and each row's last updated step (stored as
  `optimizer.latents`: checkpointed, rolled back by the guard and placed on the mesh with
  the rest of the optimizer's state)."""

  def __init__(self, table: jnp.ndarray, cfg, total_steps: int):
    if cfg.name != "adam" or cfg.get("grad_clip", 0.0) or cfg.get("update_clip", 0.0):
      raise UserError("optim.sparse_latents takes plain Adam for the latent group "
                      "(no grad_clip, no update_clip)")
    self.schedule = optim.schedule(cfg, total_steps)
    self.b1, self.b2 = cfg.get("b1", 0.9), cfg.get("b2", 0.999)
    self.eps = cfg.get("eps", 1e-8)
    # Skipped steps whose terms are still above float32 resolution: a row's move k steps
    # after its gradient shrinks as (b1 / sqrt(b2))^k.
    self.horizon = math.ceil(math.log(1e-8) / math.log(self.b1 / math.sqrt(self.b2)))
    self.mu = nnx.OptState(jnp.zeros_like(table))
    self.nu = nnx.OptState(jnp.zeros_like(table))
    self.last = nnx.OptState(jnp.zeros(table.shape[:1], jnp.int32))
    self.count = nnx.OptState(jnp.zeros((), jnp.int32))

  def _direction(self, mu, nu, t):
    """Adam's bias-corrected step direction after t updates (t a float array)."""
    return (mu / (1 - self.b1**t)) / (jnp.sqrt(nu / (1 - self.b2**t)) + self.eps)

  def _catch_up(self, mu, nu, last, now, lr_scale):
    """One row's moves over the zero-gradient steps last+1..now, and its moments after them."""
    k = jnp.arange(1, self.horizon + 1)
    s = last + k                                 # Adam's step number (1-based) of each term
    m = self.b1 ** k.astype(jnp.float32)[:, None] * mu
    v = self.b2 ** k.astype(jnp.float32)[:, None] * nu
    move = self.schedule(s - 1)[:, None] * self._direction(m, v, s.astype(jnp.float32)[:, None])
    gap = (now - last).astype(jnp.float32)
    total = jnp.sum(jnp.where((k <= now - last)[:, None], move, 0.0), axis=0)
    return lr_scale * total, self.b1**gap * mu, self.b2**gap * nu

  def catch_up(self, table: nnx.Param, rows: jnp.ndarray, lr_scale) -> None:
    """Apply the steps `rows` skipped since their last update (before the batch's forward
    pass reads them: dense Adam would have moved them already)."""
    count = self.count[...]
    moved, mu, nu = jax.vmap(self._catch_up, (0, 0, 0, None, None))(
        self.mu[...][rows], self.nu[...][rows], self.last[...][rows], count, lr_scale)
    table[...] = table[...].at[rows].add(-moved)
    self.mu[...] = self.mu[...].at[rows].set(mu)
    self.nu[...] = self.nu[...].at[rows].set(nu)
    self.last[...] = self.last[...].at[rows].set(count)

  def update(self, table: nnx.Param, rows: jnp.ndarray, grads: jnp.ndarray, lr_scale) -> None:
    """One Adam step of `rows` (caught up) from their gradients; rows distinct."""
    count = self.count[...]
    t = count + 1
    mu = self.b1 * self.mu[...][rows] + (1 - self.b1) * grads
    nu = self.b2 * self.nu[...][rows] + (1 - self.b2) * grads**2
    direction = self._direction(mu, nu, t.astype(jnp.float32))
    table[...] = table[...].at[rows].add(-self.schedule(count) * lr_scale * direction)
    self.mu[...] = self.mu[...].at[rows].set(mu)
    self.nu[...] = self.nu[...].at[rows].set(nu)
    self.last[...] = self.last[...].at[rows].set(t)
    self.count[...] = t

  def flush(self, table: nnx.Param, lr_scale) -> None:
    """Every row's skipped steps up to now: the table dense Adam would hold."""
    count = self.count[...]
    moved, mu, nu = jax.lax.map(
        lambda a: self._catch_up(a[0], a[1], a[2], count, lr_scale),
        (self.mu[...], self.nu[...], self.last[...]), batch_size=FLUSH_ROWS)
    table[...] = table[...] - moved
    self.mu[...], self.nu[...] = mu, nu
    self.last[...] = jnp.full_like(self.last[...], count)


def attach(optimizer, table: jnp.ndarray, cfg, total_steps: int) -> None:
  optimizer.latents = RowAdam(table, cfg, total_steps)


def uses_rows(optimizer) -> bool:
  return isinstance(getattr(optimizer, "latents", None), RowAdam)


def step(task, model, optimizer, batch):
  """One training step: optax on every parameter but the table, RowAdam on its rows."""
  rows = batch["index"]
  scale = optim.lr_scale(optimizer)
  optimizer.latents.catch_up(model.latents, rows, scale)

  def loss(model, z):
    return task.loss(model, {**batch, "latents": z})
  (value, aux), (grads, z_grads) = nnx.value_and_grad(
      loss, argnums=(nnx.DiffState(0, NOT_TABLE), 1), has_aux=True)(model, model.latents[...][rows])
  optimizer.update(model, grads)
  optimizer.latents.update(model.latents, rows, z_grads, scale)
  return value, aux


def flush(model, optimizer) -> None:
  optimizer.latents.flush(model.latents, optim.lr_scale(optimizer))
