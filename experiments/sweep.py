"""Run a W&B sweep YAML locally, without a W&B server.

  python -m experiments.sweep sweeps/X.yaml --workdir DIR [--max-runs N] [--override config.KEY=VALUE ...]

The runs are proposed by `sweeps`, the engine behind W&B's own controller (grid,
random and bayes), one workdir per run (DIR/runs/run-NNN), each launched as the
YAML's command would be (`python -m experiments.run --config ... --config.KEY=VALUE`).
Rerunning the same command skips finished runs and first continues a run that
crashed or was interrupted (experiments.run resumes from its checkpoint);
`--max-runs N` caps the sweep's total, finished runs included. Every finished or
failed run is appended to DIR/sweep_results.csv; DIR/sweep_state.json holds all runs.
"""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
import warnings

import yaml
from absl import app, flags

with warnings.catch_warnings():  # sweeps 0.2 declares pydantic v1 config keys: noise
  warnings.simplefilter("ignore", UserWarning)
  import sweeps
from dfm_flax import files
from dfm_flax.errors import UserError
from dfm_flax.loop import workdir as workdir_lib
from experiments.cli import parse_flags, run_main

_WORKDIR = flags.DEFINE_string("workdir", None, "Directory of the sweep (one subdirectory per run).")
_MAX_RUNS = flags.DEFINE_integer("max_runs", None, "Cap on the number of runs, finished ones included.",
                                 lower_bound=1)
_OVERRIDE = flags.DEFINE_multi_string("override", [], "config.KEY=VALUE added to every run.")
flags.mark_flags_as_required(["workdir"])
flags.DEFINE_alias("max-runs", "max_runs")


def load_sweep(path: str) -> dict:
  try:
    with open(path) as f:
      spec = yaml.safe_load(f)
  except OSError as e:
    raise UserError(f"cannot read sweep file {path}: {e.strerror}") from None
  except yaml.YAMLError as e:
    raise UserError(f"sweep file {path} is not valid YAML: {' '.join(str(e).split())}") from None
  if not isinstance(spec, dict) or "parameters" not in spec or "method" not in spec:
    raise UserError(f"sweep file {path} needs 'method' and 'parameters'")
  if spec["method"] not in ("grid", "random", "bayes"):
    raise UserError(f"sweep method {spec['method']!r} in {path}; use grid, random or bayes")
  if spec["method"] != "grid" and "metric" not in spec:
    raise UserError(f"a {spec['method']} sweep needs a 'metric' in {path}")
  return spec


def config_file(spec: dict, path: str) -> str:
  command = [str(c) for c in spec.get("command", [])]
  if "--config" in command and command.index("--config") + 1 < len(command):
    return command[command.index("--config") + 1]
  raise UserError(f"the command in {path} has no '--config experiments/NAME.py'")


def check_keys(config, keys, where: str) -> None:
  """Every swept or overridden key must exist in the experiment's config."""
  for key in keys:
    if not key.startswith("config."):
      raise UserError(f"{where}: parameter {key!r} must be named config.KEY")
    node = config
    for part in key.split(".")[1:]:
      if not hasattr(node, "keys") or part not in node:
        raise UserError(f"{where}: unknown config key {key!r}")
      node = node[part]


def flat_metric(metrics: dict, name: str):
  """metrics[a][b]... for name 'a/b/...'; a key may hold a slash itself ('fid' holds
  'classifier/gmm'), so the whole rest of the name is tried first."""
  if name in metrics:
    node = metrics[name]
    return node if isinstance(node, (int, float)) and not isinstance(node, bool) else None
  head, _, rest = name.partition("/")
  if rest and isinstance(metrics.get(head), dict):
    return flat_metric(metrics[head], rest)
  return None


class SweepState:
  """DIR/sweep_state.json: every run's parameters, status and metric."""

  def __init__(self, directory: str, identity: dict):
    self.path = os.path.join(directory, "sweep_state.json")
    self.runs = []
    if os.path.exists(self.path):
      with open(self.path) as f:
        saved = json.load(f)
      if saved["identity"] != identity:
        raise UserError(f"{directory} holds a sweep from a different YAML or --override; "
                        f"use another --workdir")
      self.runs = saved["runs"]
    self.identity = identity

  def save(self) -> None:
    with files.atomic_path(self.path, ".tmp") as tmp, open(tmp, "w") as f:
      json.dump({"identity": self.identity, "runs": self.runs}, f, indent=1, default=float)


def propose(spec: dict, runs: list[dict]):
  with warnings.catch_warnings():  # sweeps' pydantic-v1-style models warn on import.
    warnings.simplefilter("ignore")
  done = []
  for r in runs:
    state = {"finished": sweeps.RunState.finished, "failed": sweeps.RunState.failed}.get(
        r["status"], sweeps.RunState.running)
    summary = {spec["metric"]["name"]: r["metric"]} if r.get("metric") is not None and "metric" in spec else {}
    done.append(sweeps.SweepRun(name=r["name"], state=state, summary_metrics=summary,
                                config={k: {"value": v} for k, v in r["params"].items()}))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    proposal = sweeps.next_run({k: v for k, v in spec.items() if k != "command"}, done)
  if proposal is None:
    return None
  return {k: (v["value"].item() if hasattr(v["value"], "item") else v["value"])
          for k, v in proposal.config.items()}


def launch(cfg_spec: str, workdir: str, params: dict, overrides: list[str]) -> tuple[int, str]:
  args = [f"--{k}={v}" for k, v in params.items()] + [f"--{o}" for o in overrides]
  env = dict(os.environ)
  env.setdefault("WANDB_MODE", "disabled")
  proc = subprocess.run([sys.executable, "-m", "experiments.run", "--config", cfg_spec,
                         "--workdir", workdir, *args], env=env, capture_output=True, text=True)
  errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
  tail = errors[-1] if errors else (proc.stderr.strip().splitlines() or [""])[-1]
  return proc.returncode, tail


def short_names(keys: list[str]) -> dict[str, str]:
  """Each config key by its last part, or more parts where the last is shared
  (config.optim.lr -> optim.lr beside config.optim.groups.latent.lr -> latent.lr)."""
  out = {}
  for key in keys:
    parts = key.split(".")
    for n in range(1, len(parts) + 1):
      tail = ".".join(parts[-n:])
      if sum(k == tail or k.endswith("." + tail) for k in keys) == 1:
        break
    out[key] = tail
  return out


def append_csv(path: str, row: dict) -> None:
  new = not os.path.exists(path)
  with open(path, "a", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=list(row))
    if new:
      writer.writeheader()
    writer.writerow(row)


def _sweep(argv):
  if len(argv) != 2:
    raise UserError("usage: python -m experiments.sweep SWEEP.yaml --workdir DIR "
                    "[--max-runs N] [--override config.KEY=VALUE ...]")
  path = argv[1]
  spec = load_sweep(path)
  cfg_spec = config_file(spec, path)
  config = files.load_config(cfg_spec)
  check_keys(config, spec["parameters"], path)
  overrides = [o.split("=", 1)[0] for o in _OVERRIDE.value]
  check_keys(config, overrides, "--override")
  workdir_lib.prepare(_WORKDIR.value, "sweep directory")
  # One runner per sweep directory: two would propose and launch the same run-NNN.
  with workdir_lib.hold(_WORKDIR.value):
    _run_sweep(spec, cfg_spec)


def _run_sweep(spec: dict, cfg_spec: str) -> None:
  state = SweepState(_WORKDIR.value, {"sweep": spec, "overrides": _OVERRIDE.value})
  metric = spec.get("metric", {}).get("name")
  results = os.path.join(_WORKDIR.value, "sweep_results.csv")
  cap = _MAX_RUNS.value
  while True:
    pending = next((r for r in state.runs if r["status"] == "running"), None)
    if pending is None:
      if cap is not None and len(state.runs) >= cap:
        break
      params = propose(spec, state.runs)
      if params is None:
        break
      pending = {"name": f"run-{len(state.runs):03d}", "params": params, "status": "running"}
      state.runs.append(pending)
      state.save()
    run_dir = os.path.join(_WORKDIR.value, "runs", pending["name"])
    tic = time.time()
    code, tail = launch(cfg_spec, run_dir, pending["params"], _OVERRIDE.value)
    metrics = {}
    if code == 0:
      with open(os.path.join(run_dir, "metrics.json")) as f:
        metrics = json.load(f)
    pending.update(status="finished" if code == 0 else "failed",
                   metric=flat_metric(metrics, metric) if metric else None,
                   error=None if code == 0 else tail, seconds=round(time.time() - tic, 1))
    state.save()
    append_csv(results, {"run": pending["name"], "status": pending["status"],
                         "metric": metric or "", "value": pending["metric"],
                         "seconds": pending["seconds"], **pending["params"],
                         "error": pending["error"] or ""})
    names = short_names(list(pending["params"]))
    shown = " ".join(f"{names[k]}={v:.4g}" if isinstance(v, float) else f"{names[k]}={v}"
                     for k, v in pending["params"].items())
    outcome = (f"{metric}={pending['metric']:.4g}" if pending["metric"] is not None
               else pending["status"] if code == 0 else f"FAILED: {tail}")
    total = f"/{cap}" if cap else ""
    print(f"[{len(state.runs)}{total}] {pending['name']} {shown} -> {outcome} ({pending['seconds']:.0f} s)",
          flush=True)
  finished = [r for r in state.runs if r["status"] == "finished" and r.get("metric") is not None]
  if finished and metric:
    best = (max if spec["metric"].get("goal", "minimize") == "maximize" else min)(
        finished, key=lambda r: r["metric"])
    print(f"best {metric}={best['metric']:.4g}: {best['name']} {best['params']}")


def main(argv):
  run_main(_sweep, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
