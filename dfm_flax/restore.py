"""Rebuild a trained model from its workdir alone: config.json + the latest checkpoint.

No data is loaded and no training code runs: the model is built abstractly
(nnx.eval_shape) from the config and the checkpoint's metadata, then filled with
the saved weights.
"""
from __future__ import annotations

import os

import ml_collections
from flax import nnx

from dfm_flax import logs, tasks
from dfm_flax.checkpoint import Checkpointer
from dfm_flax.errors import UserError


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  if not os.path.isdir(workdir):
    raise UserError(f"workdir does not exist: {workdir}")
  saved = logs.read_json(os.path.join(workdir, "config.json"))
  if saved is None:
    raise UserError(f"no readable config.json in {workdir}: not a dfm run directory")
  return ml_collections.ConfigDict(saved)


def load_model(workdir: str, expect_task: str | None = None):
  """(config, meta, model) of the latest checkpoint in workdir."""
  config = saved_config(workdir)
  if expect_task and config.task != expect_task:
    raise UserError(f"{workdir} holds a {config.task!r} run, not a {expect_task!r} run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise UserError(f"no checkpoint in {workdir} (no checkpoints/ directory): train it first")
  ckpt = Checkpointer(ckpt_dir, read_only=True)
  try:
    meta = ckpt.read_meta()
    try:
      model = nnx.eval_shape(lambda: tasks.model_from_meta(config, meta, nnx.Rngs(0)))
    except (KeyError, TypeError, ValueError) as e:
      raise UserError(f"the checkpoint in {workdir} does not match its config.json "
                      f"({type(e).__name__}: {e})") from None
    ckpt.restore(model)
  finally:
    ckpt.close()
  return config, meta, model
