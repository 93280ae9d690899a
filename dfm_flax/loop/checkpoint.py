"""Orbax checkpoints of (model, optimizer state, metadata) in WORKDIR/checkpoints.

Metadata holds the step, the accumulated training seconds and the data seed; the
batch RNG is derived from (seed, step) so the step fixes it. Saves are
synchronous: a checkpoint that exists on disk is complete (orbax writes to a
temporary directory and renames it), so SIGKILL can lose progress but never
corrupts what was saved.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import time
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from dfm_flax.errors import UserError


def _abstract(state):
  """Restore targets: each array's own sharding, or the first device for abstract ones
  (a checkpoint saved on 4 devices then restores onto 1, and the other way round)."""
  default = jax.sharding.SingleDeviceSharding(jax.devices()[0])

  def target(x):
    sharding = getattr(x, "sharding", None) or default
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding)
  return jax.tree.map(target, state)


def _shapes(tree) -> dict[str, tuple]:
  """'a/b/0/kernel' -> shape, for any pytree of arrays or array metadata."""
  def name(path):
    keys = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path]
    return "/".join(k for k in keys if k != "value")
  return {name(p): tuple(leaf.shape) for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
          if hasattr(leaf, "shape")}


def _os_error(error: BaseException) -> OSError | None:
  """The OSError (a full disk, a missing or read-only directory) behind an orbax error."""
  seen = set()
  while error is not None and id(error) not in seen:
    if isinstance(error, OSError):
      return error
    seen.add(id(error))
    error = error.__cause__ or error.__context__
  return None


# What those tracebacks print, from two threads at once, so their lines can interleave.
_CLOSED_LOOP = re.compile(r"Traceback \(most recent call last\):|  File \"[^\"]*asyncio/base_events"
                          r"\.py\", line \d+, in \w+|self\._check_closed\(\)|raise RuntimeError\("
                          r"'Event loop is closed'\)|RuntimeError: Event loop is closed")


@contextlib.contextmanager
def quiet_closed_loop():
  """Reading a damaged checkpoint, tensorstore's threads report its failure to an asyncio
  loop orbax has already closed, which prints 'Event loop is closed' tracebacks straight to
  file descriptor 2. The failure itself is reported in one line; those tracebacks are
  noise: stderr is captured for the block and given back without them."""
  sys.stderr.flush()
  saved = os.dup(2)
  with tempfile.TemporaryFile() as captured:
    os.dup2(captured.fileno(), 2)
    try:
      yield
    finally:
      sys.stderr.flush()
      time.sleep(0.05)  # the threads' last reports
      os.dup2(saved, 2)
      os.close(saved)
      captured.seek(0)
      text = _CLOSED_LOOP.sub("", captured.read().decode(errors="replace"))
      sys.stderr.write("".join(line for line in text.splitlines(keepends=True) if line.strip()))
      sys.stderr.flush()


class Mismatch(UserError):
  """A whole checkpoint saved for another model: a wrong config, not a damaged file."""


def check_shapes(item_dir: str, abstract_state) -> None:
  """Refuse, before reading arrays, a checkpoint saved for a differently shaped model (a
  Mismatch), or one whose array metadata is missing or unreadable (damaged)."""
  try:
    with ocp.StandardCheckpointer() as reader:  # closed at once: no thread outlives the read
      saved = _shapes(reader.metadata(item_dir).item_metadata)
  except Exception as e:
    raise UserError(f"checkpoint {item_dir} is damaged: cannot read its metadata "
                    f"({type(e).__name__})") from e
  wanted = _shapes(abstract_state)
  missing = sorted(set(wanted) - set(saved))
  if missing and set(saved) < set(wanted):
    raise UserError(f"checkpoint {item_dir} is damaged: {missing[0]} is missing")
  for key in sorted(set(saved) | set(wanted)):
    if saved.get(key) != wanted.get(key):
      raise Mismatch(f"checkpoint {item_dir} does not match the model of this config: "
                     f"{key} is {saved.get(key)} there but {wanted.get(key)} here")


class Checkpointer:
  """Saves and restores a model and (optionally) its optimizer."""

  def __init__(self, directory: str, max_to_keep: int = 2, read_only: bool = False):
    self.directory = os.path.abspath(directory)
    self.read_only = read_only
    if read_only and not os.path.isdir(self.directory):
      raise UserError(f"no checkpoint directory at {self.directory}")
    if not read_only:
      self._set_aside_temporaries()
    self.max_to_keep = max_to_keep
    self._open()

  def _open(self) -> None:
    # read_only: never create or delete anything (orbax's own read_only flag only warns).
    options = ocp.CheckpointManagerOptions(
        max_to_keep=None if self.read_only else self.max_to_keep, create=not self.read_only,
        enable_async_checkpointing=False)
    try:
      self.manager = ocp.CheckpointManager(self.directory, options=options)
    except Exception as e:  # orbax raises various types for unreadable directories.
      raise UserError(f"cannot open checkpoint directory {self.directory}: {e}") from e

  def _set_aside(self, name: str, why: str) -> str:
    """Rename checkpoints/NAME out of orbax's sight (never deleted); returns the new name."""
    # Out of orbax's sight: orbax deletes whatever still looks like its temporary.
    aside = f"{name.replace('.orbax-checkpoint-tmp', '.partial')}.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
    os.rename(os.path.join(self.directory, name), os.path.join(self.directory, aside))
    print(f"note: checkpoint {self.directory}/{name} {why}; set aside as {aside}",
          file=sys.stderr)
    return aside

  def _set_aside_temporaries(self) -> None:
    """A save cut short leaves a half-written temporary directory: set it aside."""
    if os.path.isdir(self.directory):
      for name in sorted(os.listdir(self.directory)):
        if ".orbax-checkpoint-tmp" in name and ".damaged-" not in name:
          self._set_aside(name, "was never finished (a save was cut short)")

  def restore_newest(self, model: nnx.Module, optimizer: nnx.Optimizer | None = None,
                     only=...) -> dict[str, Any]:
    """Restore the newest checkpoint that restores (`newest`); returns its info."""
    return self.newest(lambda step: self.restore(model, optimizer, step, only))

  def newest(self, attempt):
    """attempt(step) for the newest step where it succeeds. Each newer checkpoint where it
    fails is set aside (renamed, with one line), or in a read-only directory passed over
    with one line; refused in one line only when none succeeds, or on a Mismatch (the
    checkpoints hold another model: a wrong config, not damage)."""
    with quiet_closed_loop():
      failures = []
      for step in sorted(self.manager.all_steps(), reverse=True):
        try:
          result = attempt(step)
        except Mismatch:
          raise
        except UserError as e:
          failures.append(step)
          if self.read_only:
            print(f"note: {e}; trying an older checkpoint", file=sys.stderr)
          else:
            self.manager.close()
            self._set_aside(str(step), f"cannot be restored ({str(e).split(': ', 1)[-1]})")
            self._open()
          continue
        if failures:
          print(f"note: using step {step}, the newest checkpoint that restores", file=sys.stderr)
        return result
    if not failures:
      raise UserError(f"no checkpoint found in {self.directory}")
    raise UserError(f"no checkpoint in {self.directory} can be restored (steps "
                    f"{', '.join(map(str, failures))}); " + (
                        "they were set aside: rerun to start again from step 0"
                        if not self.read_only else "train the run again"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, model: nnx.Module, optimizer: nnx.Optimizer | None,
           info: dict[str, Any], good=None) -> None:
    """good: (model state, optimizer state) of the divergence guard's last good step,
    when it is not this step; saved beside, so that a resumed run can still roll back."""
    items = {"model": ocp.args.StandardSave(nnx.state(model)),
             "meta": ocp.args.JsonSave(dict(info, step=step))}  # item name kept: saved runs
    if optimizer is not None:
      items["optimizer"] = ocp.args.StandardSave(nnx.state(optimizer))
    if good is not None:
      items["good_model"] = ocp.args.StandardSave(good[0])
      items["good_optimizer"] = ocp.args.StandardSave(good[1])
    try:
      self.manager.save(step, args=ocp.args.Composite(**items), force=True)
      self.manager.wait_until_finished()
    except Exception as e:
      raise _os_error(e) or e



  def restore(self, model: nnx.Module, optimizer: nnx.Optimizer | None = None,
              step: int | None = None, only=...) -> dict[str, Any]:
    """Restore into `model` (and `optimizer`) in place; returns the metadata.

    `model` may be abstract (from `nnx.eval_shape`): its state is replaced. `only` (an
    nnx filter) restores those variables alone, e.g. a start's weights into a net that
    also holds variables the start's run did not have.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"no checkpoint found in {self.directory}")
    check_shapes(os.path.join(self.directory, str(step), "model"), nnx.state(model, only))
    items = {"model": ocp.args.StandardRestore(_abstract(nnx.state(model, only))),
             "meta": ocp.args.JsonRestore()}
    if optimizer is not None:
      items["optimizer"] = ocp.args.StandardRestore(_abstract(nnx.state(optimizer)))
    restored = self._restore_items(step, items, "is damaged: it cannot be read")
    nnx.update(model, restored["model"])
    if optimizer is not None:
      nnx.update(optimizer, restored["optimizer"])
    return dict(restored["meta"])

  def delete_after(self, step: int) -> None:
    """Drop checkpoints later than `step` (the guard rolled back past them: they were
    taken on the way into a collapse, and the replay saves those steps again)."""
    for s in self.manager.all_steps():
      if s > step:
        self.manager.delete(s)

  def restore_good(self, model: nnx.Module, optimizer: nnx.Optimizer, step: int | None = None):
    """The guard's good (model state, optimizer state) saved with a checkpoint."""
    step = self.latest_step() if step is None else step
    items = {"good_model": ocp.args.StandardRestore(_abstract(nnx.state(model))),
             "good_optimizer": ocp.args.StandardRestore(_abstract(nnx.state(optimizer)))}
    restored = self._restore_items(step, items, "is damaged: its guard state cannot be read")
    return restored["good_model"], restored["good_optimizer"]

  def read_info(self, step: int | None = None) -> dict[str, Any]:
    """The metadata of a checkpoint (latest by default), without touching its arrays."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise UserError(f"no checkpoint found in {self.directory}")
    restored = self._restore_items(step, {"meta": ocp.args.JsonRestore()},
                                   "is damaged: its metadata cannot be read")
    return dict(restored["meta"])

  def _restore_items(self, step: int, items: dict, problem: str):
    """Orbax's restore of `items`; any failure (a truncated or foreign directory fails in
    many ways) becomes one line saying what is wrong."""
    try:
      return self.manager.restore(step, args=ocp.args.Composite(**items))
    except Exception as e:
      msg = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise UserError(f"checkpoint {self.directory}/{step} {problem} ({type(e).__name__}: "
                      f"{msg[:300]})") from e

  def close(self) -> None:
    self.manager.close()
