"""Metric logging: W&B (never prompting for a key), a JSON-lines history, metrics.json."""
from __future__ import annotations

import json
import math
import netrc
import os
import sys
import uuid
from typing import Any

from dfm_flax import files


def _wandb_logged_in() -> bool:
  if os.environ.get("WANDB_API_KEY"):
    return True
  try:
    auth = netrc.netrc().authenticators("api.wandb.ai")
  except (OSError, netrc.NetrcParseError):
    return False
  return bool(auth and auth[2])


WANDB_MODES = ("auto", "online", "offline", "disabled")


def wandb_mode(config_mode: str) -> str:
  """online when logged in, otherwise offline; WANDB_MODE or the config override.

  `auto` (the default) never reaches a login prompt: without credentials it
  runs offline (sync later with `wandb sync WORKDIR/wandb/offline-run-*`).
  """
  env = os.environ.get("WANDB_MODE")
  if env:
    return {"dryrun": "offline"}.get(env, env)
  if config_mode != "auto":
    return config_mode
  return "online" if _wandb_logged_in() else "offline"


def read_json(path: str) -> dict | None:
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError):
    return None


def write_json(path: str, data: Any) -> None:
  """Write atomically, so a crash never leaves half a file."""
  with files.atomic_path(path, ".tmp") as tmp, open(tmp, "w") as f:
    json.dump(data, f, indent=2, sort_keys=True, default=_jsonable)
    f.write("\n")


def _jsonable(x):
  try:
    return float(x)
  except (TypeError, ValueError):
    return str(x)


class MetricLogger:
  """Sends scalars to W&B and appends them to WORKDIR/history.jsonl."""

  def __init__(self, config, workdir: str, resume_step: int, enabled: bool = True):
    """enabled=False (processes other than 0 of a multi-process run): writes nothing."""
    self.history_path = os.path.join(workdir, "history.jsonl") if enabled else None
    self.run = None
    # W&B wants increasing steps; after a rollback the loop replays steps, so W&B gets
    # step + the steps replayed so far (the loop's own step is logged as `train_step`).
    self._replayed = 0
    if not enabled:
      return
    self._truncate_history(resume_step)
    mode = wandb_mode(config.wandb.mode)
    if mode == "disabled":
      return
    import wandb  # Imported lazily: it is slow to import and not needed when disabled.
    id_path = os.path.join(workdir, "wandb_id.txt")
    # A W&B sweep agent names the run (WANDB_RUN_ID); otherwise reuse this workdir's id so
    # that a resumed run continues the same W&B run.
    run_id = (os.environ.get("WANDB_RUN_ID")
              or (open(id_path).read().strip() if os.path.exists(id_path) else uuid.uuid4().hex[:8]))
    with open(id_path, "w") as f:
      f.write(run_id)
    try:
      self.run = wandb.init(
          project=config.wandb.project, entity=config.wandb.get("entity") or None,
          name=config.wandb.get("name") or os.path.basename(os.path.abspath(workdir)),
          config=config.to_dict(), dir=workdir, id=run_id, resume="allow", mode=mode,
          settings=wandb.Settings(silent=True))
    except Exception as e:  # A W&B outage must not stop training.
      print(f"warning: W&B disabled ({type(e).__name__}: {e})", file=sys.stderr)

  def _truncate_history(self, resume_step: int) -> None:
    """Drop entries past the restored step: they are recomputed after a resume."""
    if not os.path.exists(self.history_path):
      return
    with open(self.history_path) as f:
      rows = [line for line in f if line.strip() and json.loads(line)["step"] <= resume_step]
    with open(self.history_path, "w") as f:
      f.writelines(rows)

  def log(self, step: int, scalars: dict[str, float]) -> None:
    scalars = {k: float(v) for k, v in scalars.items()}
    if self.history_path is None:
      return
    with open(self.history_path, "a") as f:
      f.write(json.dumps({"step": step, **{k: (v if math.isfinite(v) else None)
                                           for k, v in scalars.items()}}) + "\n")
    if self.run is not None:
      self.run.log(dict(scalars, train_step=step), step=step + self._replayed)

  def event(self, step: int, back_to: int, fields: dict) -> None:
    """A rollback from `step` to `back_to` (divergence guard): the history keeps the
    path the run goes on from, plus one event row; W&B gets the event as scalars."""
    if self.history_path is None:
      return
    self._truncate_history(back_to)
    with open(self.history_path, "a") as f:
      f.write(json.dumps({"step": back_to, "event": "rollback", "from_step": step,
                          **fields}) + "\n")
    if self.run is not None:
      self.run.log(dict(fields, train_step=step), step=step + self._replayed)
    self._replayed += step - back_to

  def summary(self, metrics: dict[str, Any]) -> None:
    if self.run is not None:
      flat = {k: v for k, v in files.flatten(metrics, "/").items() if isinstance(v, (int, float))}
      self.run.summary.update(flat)

  def close(self) -> None:
    if self.run is not None:
      self.run.finish()


def read_history(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "history.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
