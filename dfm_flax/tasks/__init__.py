"""Tasks: what differs between experiments (model, batches, loss, evaluation).

A task object has:
  build_model(rngs) -> nnx.Module
  param_labels(model) -> pytree of optimizer-group names like nnx.state(model, nnx.Param), or None
  lr_multiplier(model) -> function of a parameter's path giving its lr factor, or None
  batch(step) -> pytree of arrays, a pure function of (seed, step)
  loss(model, batch) -> (scalar loss, dict of scalar diagnostics)
  evaluate(model, workdir) -> dict of final metrics (and writes figures)
"""
from __future__ import annotations

import importlib

from dfm_flax.errors import UserError

_TASKS = {
    "compress": "dfm_flax.tasks.compress:CompressTask",
}


def make(config):
  if config.task not in _TASKS:
    raise UserError(f"unknown task {config.task!r}; known: {', '.join(sorted(_TASKS))}")
  module, name = _TASKS[config.task].split(":")
  return getattr(importlib.import_module(module), name)(config)
