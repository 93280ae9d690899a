"""Rebuild a trained model from its workdir alone: config.json + the latest checkpoint.

No data is loaded and no training code runs: the model is built abstractly
(nnx.eval_shape) from the config and the checkpoint's metadata, then filled with
the saved weights.
"""
from __future__ import annotations

import functools
import json
import os

import ml_collections
import numpy as np
from flax import nnx

from dfm_flax import tasks
from dfm_flax.errors import UserError
from dfm_flax.loop import logs
from dfm_flax.loop.checkpoint import Checkpointer, Mismatch

# Settings added to the config files after runs were saved, per task, each with the value
# that does what those runs did. The one place that reads an older run's config.json as a
# current one: a run saved without a key resumes, restores and serves as a start under it.
ADDED_LATER = {
    "generate": {"data.test_fraction": 0.0, "optim.sparse_latents": False},
    "vae": {"data.test_fraction": 0.0},
    "compress": {"model.first_init_variance": 0.0},
    "meta": {"model.first_init_variance": 0.0,
             "meta.scale": 1, "meta.source": "photos", "meta.inner_optimizer": "sgd",
             "meta.lm_damping": 0.1, "meta.lm_down": 1.5, "meta.lm_search": False,
             "meta.lm_refit": 0},
}


def upgrade(saved: dict) -> dict:
  """An older run's config (a nested dict, as in config.json) with every key its task's
  ADDED_LATER names and it lacks."""
  saved = json.loads(json.dumps(saved))  # A copy: the caller's dict stays as read.
  for key, value in ADDED_LATER.get(saved.get("task"), {}).items():
    section, name = key.split(".")
    saved.setdefault(section, {}).setdefault(name, value)
  return saved


def saved_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run was saved with, upgraded to the current keys."""
  if not os.path.isdir(workdir):
    raise UserError(f"workdir does not exist: {workdir}")
  saved = logs.read_json(os.path.join(workdir, "config.json"))
  if saved is None:
    raise UserError(f"no readable config.json in {workdir}: not a dfm run directory")
  return ml_collections.ConfigDict(upgrade(saved))


def load_model(workdir: str, expect_task: str | None = None):
  """(config, info, model) of the latest checkpoint in workdir."""
  config = saved_config(workdir)
  if expect_task and config.task != expect_task:
    raise UserError(f"{workdir} holds a {config.task!r} run, not a {expect_task!r} run")
  ckpt_dir = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(ckpt_dir):
    raise UserError(f"no checkpoint in {workdir} (no checkpoints/ directory): train it first")
  ckpt = Checkpointer(ckpt_dir, read_only=True)
  try:
    info, model = _newest_model(ckpt, config, workdir)
  finally:
    ckpt.close()
  return config, info, model


def _newest_model(ckpt: Checkpointer, config, workdir: str):
  """(info, model) of the newest checkpoint that restores (Checkpointer.newest: nothing is
  renamed, the run is only read)."""
  if ckpt.latest_step() is None:
    raise UserError(f"no checkpoint in {workdir}: train it first")

  def attempt(step):
    info = ckpt.read_info(step)
    try:
      model = nnx.eval_shape(lambda: tasks.model_from_info(config, info, nnx.Rngs(0)))
    except (KeyError, TypeError, ValueError) as e:
      raise Mismatch(f"the checkpoint in {workdir} does not match its config.json "
                     f"({type(e).__name__}: {e})") from None
    ckpt.restore(model, step=step)
    return info, model
  return ckpt.newest(attempt)


def load_start(run: str):
  """(model config, per-layer (a, b) as float32 numpy) of the net a run ended with: the
  start that difference coding (codec `start=`) measures from, e.g. a meta-learning run.

  One encode reads it several times (each bit depth tried, the fine-tune, the file), so
  it is read once per state of the run's checkpoints/ and config.json (a new checkpoint
  changes that directory's mtime, a rewritten config its own: either is read afresh); what
  it returns is read-only."""
  stamps = tuple(os.stat(p).st_mtime_ns if os.path.exists(p) else None
                 for p in (os.path.join(run, "checkpoints"), os.path.join(run, "config.json")))
  return _read_start(os.path.abspath(run), stamps)


@functools.lru_cache(maxsize=4)
def _read_start(run: str, _mtimes):
  config, _, model = load_model(run)
  if not hasattr(model, "net_params") or getattr(model, "count", 0):
    raise UserError(f"{run} does not hold one Fourier net to start from")
  params = numpy_params(model)
  for array in (x for layer in params for x in layer):
    array.flags.writeable = False  # Shared by every later call: read-only.
  return ml_collections.FrozenConfigDict(config.model), params


def numpy_params(model) -> list:
  """The per-layer (a, b) of a model's Fourier net as float32 numpy arrays."""
  return [(np.asarray(a, np.float32), np.asarray(b, np.float32)) for a, b in model.net_params()]
