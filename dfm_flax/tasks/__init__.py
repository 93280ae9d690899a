"""Tasks: what differs between experiments (model, batches, loss, evaluation).

Each task module defines `Task(config)` and `model_from_info(config, info, rngs)`,
which rebuilds the model from the config and the checkpoint metadata alone (no
data), for sampling and feature extraction. A Task object has:
  checkpoint_info() -> dict saved with every checkpoint (what model_from_info needs)
  build_model(rngs) -> nnx.Module
  param_labels(model) -> pytree (or function of the params) of optimizer-group names, or None
  lr_multiplier(model) -> function of a parameter's path giving its lr factor, or None
  batch(step, rows=None) -> pytree of arrays, a pure function of (seed, step); rows
      (start, stop) asks for only those rows of the leading axis (a process's share)
  batch_rows() -> the leading size of a whole batch (default train.batch_size)
  loss(model, batch) -> (scalar loss, dict of scalar diagnostics)
  evaluate(model, workdir) -> dict of final metrics (and writes figures)
  reference_loss() -> the loss of the task's flat prediction (e.g. an image's mean
      colour), or None: the divergence guard's yardstick for a collapse (guard.py)
  guarded_loss(loss, aux, model) -> the number the guard judges at a log step
      (default: the loss)
  warm_up(model) -> None: compile what evaluate will need, given a copy of the model
      (the loop runs it in a thread while training runs); optional
  result_warning(metrics) -> a line saying the final metrics are no result (e.g. a fit
      that never left its flat start), or "" (default)
  start_notes(source) -> lines to print when the run starts from the weights of run
      `source` (config.init_from) where that start may not serve it; [] (default)
"""
from __future__ import annotations

import importlib

from dfm_flax.errors import UserError

_TASKS = {
    "compress": "dfm_flax.tasks.compress",
    "generate": "dfm_flax.tasks.generate",
    "classify": "dfm_flax.tasks.classify",
    "vae": "dfm_flax.tasks.vae",
    "meta": "dfm_flax.tasks.meta_learning",
}


def module(name: str):
  if name not in _TASKS:
    raise UserError(f"unknown task {name!r}; known: {', '.join(sorted(_TASKS))}")
  return importlib.import_module(_TASKS[name])


def make(config):
  return module(config.task).Task(config)


def model_from_info(config, info: dict, rngs):
  return module(config.task).model_from_info(config, info, rngs)


class TaskBase:
  """Defaults for the optional parts of the task interface."""

  def checkpoint_info(self) -> dict:
    return {}

  def param_labels(self, model):
    return None

  def lr_multiplier(self, model):
    return None

  def batch_rows(self) -> int:
    return self.config.train.batch_size

  def reference_loss(self) -> float | None:
    return None

  def guarded_loss(self, loss: float, aux: dict, model) -> float:
    """The number the divergence guard judges at a log step (dfm_flax/loop/guard.py): the
    training loss, unless that swings far more between batches than a healthy run's."""
    return loss

  def result_warning(self, metrics: dict) -> str:
    return ""

  def start_notes(self, source: str) -> list[str]:
    return []

  warm_up = None  # A task that has one gets a copy of the model in a thread (train.py).
