"""The one training loop shared by every experiment: `train_and_evaluate(config, workdir)`.

What is experiment-specific lives in a task (dfm_flax/tasks): the model, the
batches, the loss and the final evaluation. This loop owns the rest: jit-compiled
steps, optax optimizer, orbax checkpoints (every `train.checkpoint_every` steps,
at the end, and on Ctrl-C), resume, W&B + history logging, the progress bar and
metrics.json. Batches depend only on (seed, step), so a resumed run takes the same
path as one never interrupted.
"""
from __future__ import annotations

import json
import math
import os
import signal
import sys
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from dfm_flax import files, tasks
from dfm_flax.errors import UserError
from dfm_flax.loop import guard, logs, optim, progress, restore, schema, sparse_rows
from dfm_flax.loop import workdir as workdir_lib
from dfm_flax.loop.checkpoint import Checkpointer
from dfm_flax.nets import fourier
from dfm_flax.parallel import distributed, sharding

# Keys that may change between a run and its resume without changing its result
# (a run may resume on another number of processes; a run stopped at train.stop_at
# may be continued further along the same schedule).
_RESUMABLE = ("wandb.", "dist.", "train.stop_at", "train.eval_chunk")  # Not the fit.


def _flat(cfg: dict) -> dict:
  return {k: v for k, v in files.flatten(cfg).items() if not k.startswith(_RESUMABLE)}


def check_resumable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuse to resume a workdir whose saved config.json differs from `config`."""
  path = os.path.join(workdir, "config.json")
  current = json.loads(config.to_json_best_effort())
  saved = logs.read_json(path)
  if saved is not None:
    old, new = _flat(restore.upgrade(saved)), _flat(current)
    diff = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]
    if diff:
      raise UserError(f"{workdir} holds a run with a different config ({'; '.join(diff)}); "
                      f"use a new --workdir or the original settings")


def end_step(config) -> int:
  """Where the run stops: train.steps, or train.stop_at when set (> 0). The lr schedule
  always spans train.steps: a run cut at stop_at took exactly the first stop_at steps of
  the full run (studies/panel.py probes warm-up and peak this way)."""
  stop_at = int(config.train.get("stop_at", 0) or 0)
  return min(stop_at, config.train.steps) if stop_at > 0 else config.train.steps


def finished_metrics(config, workdir: str) -> dict | None:
  """metrics.json of a run that already reached its end step, else None."""
  metrics = logs.read_json(os.path.join(workdir, "metrics.json"))
  if metrics and metrics.get("steps") == end_step(config):
    return metrics
  return None


class TrainStep:
  """One optimizer step as a plain `jax.jit` over the split (model, optimizer) state.

  `nnx.jit` walks the module graph in Python on every call, which for these small
  nets costs more than the step itself on an accelerator (benchmarks/step_overhead.py).
  Here the graph is split once; the state is donated, so the update happens in place.
  Donation invalidates the arrays the nnx objects hold: call `sync()` before reading the
  model or optimizer, and `reload()` after changing them from outside (restore,
  rollback).
  """

  def __init__(self, task, model, optimizer):
    self.model, self.optimizer = model, optimizer
    self.graphdef, self.state = nnx.split((model, optimizer))

    def step(state, batch):
      model, optimizer = nnx.merge(self.graphdef, state)
      if sparse_rows.uses_rows(optimizer):
        loss, aux = sparse_rows.step(task, model, optimizer, batch)
      else:
        (loss, aux), grads = nnx.value_and_grad(task.loss, has_aux=True)(model, batch)
        optimizer.update(model, grads)
      return nnx.state((model, optimizer)), loss, aux
    self._step = jax.jit(step, donate_argnums=0)

    def flush(state):
      model, optimizer = nnx.merge(self.graphdef, state)
      sparse_rows.flush(model, optimizer)
      return nnx.state((model, optimizer))
    self._flush = jax.jit(flush, donate_argnums=0) if sparse_rows.uses_rows(optimizer) else None

  def __call__(self, batch):
    self.state, loss, aux = self._step(self.state, batch)
    return loss, aux

  def flush(self) -> None:
    """Bring the latent rows up to date (sparse_rows.py): at the end of training, so that
    the saved and evaluated table is dense Adam's."""
    if self._flush is not None:
      self.state = self._flush(self.state)

  def compile(self, batch):
    """The compiled step for this batch's shapes (for XLA's cost and memory analyses)."""
    return self._step.lower(self.state, batch).compile()

  def sync(self) -> None:
    """Point the nnx model and optimizer at the current state."""
    nnx.update((self.model, self.optimizer), self.state)

  def reload(self) -> None:
    """Take the state from the nnx model and optimizer (changed from outside)."""
    _, self.state = nnx.split((self.model, self.optimizer))


def make_train_step(task):
  """(model, optimizer, batch) -> (loss, aux), updating both in place, for one model and
  optimizer: the convenient form for tests; the loop uses TrainStep (no sync per step)."""
  compiled = []

  def train_step(model, optimizer, batch):
    if not compiled:
      compiled.append(TrainStep(task, model, optimizer))
    step = compiled[0]
    assert step.model is model and step.optimizer is optimizer, "one model per train_step"
    step.reload()  # The caller may have changed the model between calls.
    out = step(batch)
    step.sync()
    return out
  return train_step


class _StopOnSigint:
  """Turns the first Ctrl-C into a request the loop honours between steps.

  A KeyboardInterrupt raised in the middle of a step could leave the model half
  updated; the loop instead saves a checkpoint at a step boundary and exits.
  A second Ctrl-C interrupts at once.
  """

  def __enter__(self):
    self.requested = False
    self._previous = None
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGINT, self._handle)
    return self

  def _handle(self, signum, frame):
    if self.requested:
      raise KeyboardInterrupt
    self.requested = True
    print("\nCtrl-C: saving a checkpoint after this step (press again to abort)", file=sys.stderr)

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGINT, self._previous)
    return False


def build(config, task):
  """The task's model and its optimizer (fresh weights, on the default device).
  optim.sparse_latents: the latent table's group is Adam on the batch's rows alone
  (sparse_rows.py) instead of an optax group."""
  model = task.build_model(nnx.Rngs(config.seed))
  if not config.optim.get("sparse_latents", False):
    tx = optim.build(config.optim, config.train.steps, task.param_labels(model),
                     task.lr_multiplier(model))
    return model, nnx.Optimizer(model, tx, wrt=nnx.Param)
  if not isinstance(getattr(model, "latents", None), nnx.Param):
    raise UserError("optim.sparse_latents needs a latent table (an auto-decoder); this model "
                    "has none", exit_code=2)
  rest, latent_cfg = optim.group(config.optim, "latent")
  tx = optim.build(rest, config.train.steps, None, task.lr_multiplier(model))
  optimizer = nnx.Optimizer(model, tx, wrt=sparse_rows.NOT_TABLE)
  sparse_rows.attach(optimizer, model.latents[...], latent_cfg, config.train.steps)
  return model, optimizer


def _init_from(model, source: str, task) -> None:
  """Start from the weights of another run (fine-tuning); its optimizer state is not used.
  The task says in a line each where such a start may not serve it (TaskBase.start_notes)."""
  source_ckpt = Checkpointer(os.path.join(source, "checkpoints"), read_only=True)
  try:
    # A difference grid's start comes from the config (quant_start), not from the source.
    source_ckpt.restore_newest(model, only=nnx.Not(fourier.QuantStart))
  finally:
    source_ckpt.close()
  _say(f"initialised from the weights in {source}")
  for note in task.start_notes(source):
    _say(note)


def place_on_mesh(config, model, optimizer):
  """Move model and optimizer state onto the config's mesh; returns the mesh."""
  mesh_cfg = _mesh_config(config)
  mesh = sharding.make_mesh(mesh_cfg)
  nnx.update(model, sharding.place(nnx.state(model), mesh, mesh_cfg.shard_latents))
  nnx.update(optimizer, sharding.place(nnx.state(optimizer), mesh, mesh_cfg.shard_latents))
  return mesh


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Train the task named by `config.task` in `workdir` (resuming), then evaluate it.

  In a multi-process run (dfm_flax/parallel/distributed.py) every process calls this; each
  feeds its own rows of every batch, all write their shards of each checkpoint, and
  process 0 alone writes config.json, logs, figures and metrics.json (the others
  return {}).
  """
  schema.check(config)  # every value, before anything is read, allocated or written
  check_resumable(config, workdir)
  done = finished_metrics(config, workdir)
  if done is not None:
    print(f"{workdir} already finished {done['steps']} steps; metrics.json kept", file=sys.stderr)
    return done
  main = distributed.is_main()
  task = tasks.make(config)  # Validates the inputs before anything is written.
  workdir_lib.prepare(workdir)
  # One run per workdir: process 0 holds the lock for the whole job.
  with workdir_lib.hold(workdir, enabled=main):
    check_resumable(config, workdir)  # again: no other run can write it now
    return _train_and_evaluate(config, workdir, task, main)


def _train_and_evaluate(config, workdir: str, task, main: bool) -> dict[str, Any]:
  if main:
    logs.write_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
  model, optimizer = build(config, task)
  mesh = place_on_mesh(config, model, optimizer)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"))
  info = {"seconds": 0.0}
  watch = guard.DivergenceGuard(guard.config_of(config), task.reference_loss())
  if ckpt.latest_step() is not None:  # Restored straight onto this run's mesh.
    info = ckpt.restore_newest(model, optimizer)
    _resume_guard(watch, info, ckpt, model, optimizer)
    _say(f"resumed from checkpoint at step {info['step']}")
  elif config.get("init_from", ""):
    _init_from(model, config.init_from, task)
  start = int(info.get("step", 0))
  sharding.global_batch(task, start, mesh)  # A batch that does not divide fails here.

  logger = logs.MetricLogger(config, workdir, resume_step=start, enabled=main)
  warming = warm_up_evaluation(task, model) if main else None
  try:
    seconds = _loop(config, task, model, optimizer, ckpt, logger, start, info["seconds"], mesh,
                    watch)
    # Evaluation runs on one device of process 0, whatever the training mesh was.
    state = sharding.to_host(nnx.state(model))
    if not main:
      return {}
    nnx.update(model, jax.device_put(state, jax.local_devices()[0]))
    if warming is not None:
      warming.join()  # Usually long finished.
    metrics = task.evaluate(model, workdir)
    metrics.update(steps=end_step(config), seconds=round(seconds, 2),
                   recoveries=watch.state.recoveries, collapsed=watch.state.collapsed)
    if metrics["collapsed"]:
      _say(f"warning: this run ended collapsed (its loss stayed far above its best for the "
           f"last {watch.state.bad} log steps; see dfm_flax/loop/guard.py): its figures are not a "
           f"result; rerun with another seed or a lower optim.lr")
    elif warning := task.result_warning(metrics):
      _say(warning)
    logs.write_json(os.path.join(workdir, "metrics.json"), metrics)
    logger.summary(metrics)
    return metrics
  finally:
    if warming is not None:  # Before the interpreter shuts down: an import may be under way.
      warming.join()
    logger.close()
    ckpt.close()


def warm_up_evaluation(task, model) -> threading.Thread | None:
  """Start the task's warm_up (compiling evaluation's functions) in a thread, so that it
  overlaps training instead of following it. It gets a copy of the model placed as
  evaluation places the trained one (one device of this process): the training step
  donates the model's own buffers, and the same placement means the same compilation."""
  if task.warm_up is None:
    return None
  graphdef, state = nnx.split(model)
  copy = nnx.merge(graphdef, jax.device_put(sharding.to_host(state), jax.local_devices()[0]))

  def warm_up():
    try:
      task.warm_up(copy)
    except Exception as e:  # Only a head start: evaluation compiles what it needs anyway.
      _say(f"note: evaluation warm-up failed ({type(e).__name__}: {e}); evaluation will compile later")

  thread = threading.Thread(target=warm_up, name="warm-up-evaluation")
  thread.start()
  return thread


def _resume_guard(watch, info: dict, ckpt, model, optimizer) -> None:
  """The guard as it was at the checkpoint, with its last good state (kept in the
  checkpoint when it is older than the checkpoint itself)."""
  watch.state = guard.GuardState.from_dict(info.get("guard"))
  step, good = int(info["step"]), watch.state.good_step
  if good == step and watch.intervenes:  # (detect mode never rolls back: no copy kept)
    watch.keep(step, model, optimizer)
  elif good >= 0:
    watch.restore_kept(*ckpt.restore_good(model, optimizer, step), good)


def _say(message: str) -> None:
  """A progress message, from process 0 only."""
  if distributed.is_main():
    print(message, file=sys.stderr)


def _stop_requested(stop, step: int, every: int) -> bool:
  """Ctrl-C on any process stops all of them at the same step (checked every `every`)."""
  if jax.process_count() == 1:
    return stop.requested
  if step % every:
    return False
  return bool(np.any(multihost_utils.process_allgather(np.int32(stop.requested))))


def _mesh_config(config) -> ml_collections.ConfigDict:
  return config.get("mesh") or ml_collections.ConfigDict({"data": -1, "shard_latents": False})


def _loop(config, task, model, optimizer, ckpt, logger, start: int, seconds: float, mesh,
          watch) -> float:
  """Run steps start..end_step; returns the accumulated training seconds."""
  steps, every, log_every = end_step(config), config.train.checkpoint_every, config.train.log_every
  train_step = TrainStep(task, model, optimizer)
  step, last_saved = start, start
  # On a terminal the bar redraws in place; in a log file a line every 30 s.
  bar = progress.bar(steps, start, config.task,
                     disable=config.train.get("quiet", False) or not distributed.is_main())
  tic = time.perf_counter()

  def save(at):
    train_step.sync()
    good = watch.kept() if 0 <= watch.state.good_step != at else None
    try:
      ckpt.save(at, model, optimizer, {"seconds": seconds + time.perf_counter() - tic,
                                       "seed": config.seed, "guard": watch.state.to_dict(),
                                       **task.checkpoint_info()}, good=good)
    except OSError as e:  # a full disk, a vanished or read-only directory
      raise UserError(f"cannot save the checkpoint of step {at} in {ckpt.directory}: "
                      f"{e.strerror or e}; the checkpoints before it are kept: free the space "
                      f"(or fix the directory) and rerun the same command") from None

  with _StopOnSigint() as stop:
    while step < steps:
      if _stop_requested(stop, step, log_every):
        save(step)
        bar.close()
        raise UserError(f"interrupted; checkpoint saved at step {step}; rerun the same "
                        f"command to resume", exit_code=130)
      loss, aux = train_step(sharding.global_batch(task, step, mesh))
      step += 1
      will_save = step % every == 0 and step < steps
      if step % log_every == 0 or step == steps or will_save:
        loss = float(sharding.to_host(loss))
        train_step.sync()  # The guard reads the model, copies the state, or rolls it back.
        judged = task.guarded_loss(loss, aux, model)
        if watch.observe(step, judged, model, optimizer, final=step == steps) == "rollback":
          line = watch.rollback(step, judged, model, optimizer)
          train_step.reload()
          if distributed.is_main():
            bar.write(line, file=sys.stderr)  # On its own line, above the bar.
          logger.event(step, watch.state.good_step,
                       {"recovery": watch.state.recoveries, "lr_scale": optim.get_lr_scale(optimizer)})
          step = watch.state.good_step
          ckpt.delete_after(step)
          last_saved = min(last_saved, step)
          bar.n = step
          continue
        if not math.isfinite(loss):  # Checked before any save: saved states are finite.
          raise UserError(
              f"loss became {loss} at step {step}; stopped. The last good checkpoint "
              f"(step {last_saved}) is kept; lower optim.lr or change the init")
      if step % log_every == 0 or step == steps:
        scalars = {"loss": loss, **{k: float(v) for k, v in sharding.to_host(aux).items()}}
        if judged != loss:  # The task's guard reads its own number (tasks.TaskBase.guarded_loss).
          scalars["guarded_loss"] = judged
        logger.log(step, scalars)
        bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items()}, refresh=False)
      bar.update(1)
      if will_save:
        save(step)
        last_saved = step
    train_step.flush()
    if step != last_saved:  # Not when resuming a run whose last step was already saved.
      save(step)
  train_step.sync()
  bar.close()
  return seconds + time.perf_counter() - tic
