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


def start_size_note(run: str, shapes) -> str:
  """A line for a fit that starts from `run` (`init_from`, `codec encode --init`) when an
  image of `shapes` is not of the size the start was meta-learned on (its crops), else ''."""
  meta = saved_config(run).get("meta", {})
  crop, scale = meta.get("crop"), meta.get("scale", 1)
  other = [s for s in shapes if tuple(s[:2]) != (crop, crop)]
  if not crop or not other:
    return ""
  h, w = other[0][:2]
  windows = f" of {crop * scale}-pixel windows" if scale > 1 else ""
  # Measured (README, "Meta-learned starting points"): chelsea, 451x300, from the 6x5
  # start learned on 32x32 crops, decoded 4.5 dB below the same fit from a random start;
  # three photographs from one learned at their scale (meta.scale 8), 0.5-2.3 dB below.
  return (f"note: {run} was learned on {crop}x{crop} crops{windows}; on this {w}x{h} image a "
          f"fit from it can end worse than one from a random start (README: 4.5 dB worse on a "
          f"451x300 photograph, 0.5-2.3 dB from a start learned at its scale)")


def lm_start_note(run: str) -> str:
  """A line for a gradient fit (`init_from`, `codec encode --init` without --lm_steps) that
  starts from `run` when `run` learned its start for Levenberg-Marquardt steps, else ''."""
  from dfm_flax.tasks import meta  # Only for a fit from a start: not at import.
  if meta.inner_optimizer(saved_config(run).get("meta", {})) != "lm":
    return ""
  # Measured (README, "Meta-learned starting points"): 16 held-out chelsea crops, the 4x3
  # net's :lm_search start, compress.py:best's recipe for 10,000 steps: 30.19 dB against
  # 35.41 from random starts; 10 LM steps from it reach 32.25.
  return (f"note: {run} was learned for Levenberg-Marquardt steps; a gradient fit from it can "
          f"end far below one from a random start (README: 30.19 against 35.41 dB after the "
          f"codec's 10,000-step recipe on 32x32 crops); fit small images from it with `codec "
          f"encode --lm_steps`")


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
