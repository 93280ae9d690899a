"""The divergence guard of the shared loop: notice a collapse, roll back, lower the lr.

What a collapse looks like here: the hidden values of a Fourier net grow until every
phase 2 pi k.h wraps many times across the image, the features become noise, and the
net falls back to its constant term (a flat image at the mean colour; for the
generative models, the mean digit). The training loss jumps several-fold above the
best it had reached and stays there; a NaN/inf loss is the extreme case.

Detection therefore reads only the loss the loop already fetches at its log steps (no
extra host sync, and the same rule for every task):
  * non-finite loss: a collapse at once;
  * for `patience` log steps in a row (or at the run's last step), either loss > `ratio`
    x the best logged loss,
    or, when the task knows the loss of its flat prediction (`reference_loss`: the
    compression task's mean colour) and the run had gained at least 3 dB over it, the
    run lost more than half of that gain (in dB), or, once it had been better than flat,
    it fell more than 1 dB below flat (`BELOW_FLAT`): a collapse. One noisy batch is never
    enough; `ratio` (default 4, i.e. 6 dB of PSNR) is far above the batch-to-batch noise
    of a healthy run (a few percent at 4,096 pixels per batch), and the flat-image test
    catches the collapses of nets that had not yet got far above flat (a 20 dB fit on an
    image whose mean colour gives 12 dB falls only 6x when it collapses). The below-flat
    test catches nets that never got far above flat and then fell below it, which
    neither other rule sees (docs/recipe.md).
Hidden-value norms would see it coming earlier, but need a task-specific probe inside
the jitted step; the loss is enough because nothing is lost: we roll back.

Recovery: the loop keeps, in memory, a copy of the model and optimizer at the last
log step whose loss was healthy and, once the run has beaten its flat image, no worse
than flat (`worth_keeping`). On a collapse it restores that
copy, multiplies the learning rate by `lr_factor` (the optimizer's `lr_scale`, see
optim.py) and replays from that step: the batches depend on (seed, step) only, so the
run stays deterministic, and the final weights are the product of exactly
train.steps updates along the final path. After `max_recoveries` the guard stops
intervening and the run ends as it ends; if it ends collapsed, metrics.json says
`collapsed: true`.

Modes (config.guard.mode): "recover" (default), "detect" (never intervenes, but a run
that ends collapsed is reported as such: the thesis's literal recipe), "off".
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from dfm_flax.errors import UserError
from dfm_flax.loop import optim

# A loss this many times the flat image's (1 dB of PSNR), in a run that had been better
# than flat, is a net worse than its own mean colour: broken, whatever its best was.
# Batch-to-batch noise at 4,096 pixels is a few percent, far below 26%.
BELOW_FLAT = 10 ** 0.1

MODES = ("recover", "detect", "off")


def defaults() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "mode": "recover", "ratio": 4.0, "patience": 3, "lr_factor": 0.5, "max_recoveries": 4})


def config_of(config) -> ml_collections.ConfigDict:
  """config.guard merged over the defaults (configs written before the guard have none)."""
  merged = defaults()
  merged.update(config.get("guard") or {})
  if merged.mode not in MODES:
    raise UserError(f"unknown guard.mode {merged.mode!r}; use one of {', '.join(MODES)}")
  if not (merged.ratio > 1 and merged.patience >= 1 and 0 < merged.lr_factor < 1):
    raise UserError("guard needs ratio > 1, patience >= 1 and 0 < lr_factor < 1")
  return merged


@dataclasses.dataclass
class GuardState:
  """What the guard knows; saved in every checkpoint's metadata (resume is exact)."""
  best: float = math.inf
  bad: int = 0  # Consecutive log steps above ratio x best.
  recoveries: int = 0
  good_step: int = -1  # Step of the in-memory copy (-1: none yet).
  collapsed: bool = False  # Last verdict: the loss is in a collapse now.

  def to_dict(self) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_dict(cls, saved: dict | None) -> "GuardState":
    saved = dict(saved or {})
    if saved.get("best") is None:
      saved["best"] = math.inf
    return cls(**{f.name: saved[f.name] for f in dataclasses.fields(cls) if f.name in saved})


def _copy(tree):
  return jax.tree.map(lambda x: jnp.array(x, copy=True) if isinstance(x, jax.Array) else x, tree)


class DivergenceGuard:
  """Watches the loss at log steps; keeps the last good state; rolls back on a collapse."""

  def __init__(self, cfg: ml_collections.ConfigDict, reference_loss: float | None = None,
               state: GuardState | None = None):
    self.cfg = cfg
    self.reference = reference_loss
    self.state = state or GuardState()
    self.kept_state = None  # (model state, optimizer state) at state.good_step.

  def healthy(self, loss: float) -> bool:
    """Finite, within ratio x best, and (when the flat loss is known and the run got
    3 dB past it) still holding more than half of its dB gain over flat, and (once it was
    better than flat) not more than 1 dB below flat."""
    best = self.state.best
    if not math.isfinite(loss) or loss > self.cfg.ratio * best:
      return False
    if self.beat_flat and loss > BELOW_FLAT * self.reference:
      return False
    if self.reference and best <= self.reference / 2:
      return loss <= math.sqrt(best * self.reference)
    return True

  def worth_keeping(self, loss: float) -> bool:
    """A state to roll back to: once the run has beaten its flat image, not one worse
    than flat. Healthy (within 1 dB of flat) is not enough there: a fit rolled back to
    such a state collapsed again from it at every lr the guard tried."""
    return not (self.beat_flat and loss > self.reference)

  @property
  def beat_flat(self) -> bool:
    """The task knows its flat loss and the run has been better than it."""
    return bool(self.reference) and self.state.best < self.reference

  @property
  def intervenes(self) -> bool:
    return self.cfg.mode == "recover" and self.state.recoveries < self.cfg.max_recoveries

  def observe(self, step: int, loss: float, model, optimizer, final: bool = False) -> str:
    """Judge the loss logged at `step`: "ok", or "rollback" (call `rollback` next).

    At the final step (`final`) one unhealthy loss is enough: patience guards against a
    noisy batch mid-run, but a run must not end inside a collapse that began fewer than
    `patience` log steps before its end (as fits cut short after the peak lr can)."""
    s = self.state
    if self.cfg.mode == "off":
      return "ok"
    finite = math.isfinite(loss)
    if self.healthy(loss):
      s.best, s.bad, s.collapsed = min(s.best, loss), 0, False
      if self.intervenes and self.worth_keeping(loss):
        self.keep(step, model, optimizer)
      return "ok"
    s.bad += 1
    s.collapsed = not finite or s.bad >= self.cfg.patience or final
    if s.collapsed and self.intervenes and self.kept_state is not None:
      return "rollback"
    return "ok"

  def keep(self, step: int, model, optimizer) -> None:
    """Remember the current state as the last good one."""
    self.kept_state = (_copy(nnx.state(model)), _copy(nnx.state(optimizer)))
    self.state.good_step = step

  def restore_kept(self, good_model_state, good_optimizer_state, step: int) -> None:
    """The kept copy, as read back from a checkpoint (resume)."""
    self.kept_state = (good_model_state, good_optimizer_state)
    self.state.good_step = step

  def kept(self):
    return self.kept_state

  def rollback(self, step: int, loss: float, model, optimizer) -> str:
    """Restore the last good state with a lower lr; returns the line to print."""
    s = self.state
    model_state, optimizer_state = self.kept_state
    # Lower the lr from the one that just failed, not the kept copy's: a second collapse
    # before a new good step rolls back to the same copy, and would otherwise replay the
    # same lr into the same collapse (hubble's 9x6 fit: three rollbacks to step 1,200,
    # each at x0.25, each collapsing again at step 1,300).
    scale = optim.get_lr_scale(optimizer) * self.cfg.lr_factor
    nnx.update(model, _copy(model_state))
    nnx.update(optimizer, _copy(optimizer_state))
    optim.set_lr_scale(optimizer, scale)
    s.recoveries += 1
    s.bad, s.collapsed = 0, False
    return (f"guard: the loss collapsed at step {step} ({loss:.4g}, best {s.best:.4g}); "
            f"rolled back to step {s.good_step} with the learning rate x{scale:g} "
            f"(recovery {s.recoveries} of at most {self.cfg.max_recoveries})")

