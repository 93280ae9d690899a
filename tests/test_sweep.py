"""The offline sweep runner and the Fig. 5.1 grid figure, as a user runs them."""
import csv
import json
import os

import pytest
import yaml

from tests.helpers import ROOT, error_line, run_cli

TINY = {
    "method": "grid",
    "metric": {"name": "psnr", "goal": "maximize"},
    "parameters": {"config.model.width": {"values": [2, 3]}, "config.seed": {"values": [0, 1]}},
    "command": ["python", "-m", "experiments.run", "--config", "experiments/compress.py:smoke", "${args}"],
}
FAST = ["--override", "config.train.steps=20"]


def write(tmp_path, spec, name="s.yaml"):
  path = tmp_path / name
  path.write_text(yaml.safe_dump(spec))
  return str(path)


def rows(directory):
  with open(os.path.join(directory, "sweep_results.csv")) as f:
    return list(csv.DictReader(f))


@pytest.mark.slow
def test_grid_sweep_is_capped_resumable_and_drawn(tmp_path):
  sweep, wd = write(tmp_path, TINY), str(tmp_path / "sweep")
  first = run_cli("experiments.sweep", sweep, "--workdir", wd, "--max-runs", "2", *FAST)
  assert first.returncode == 0, first.stderr
  assert [r["status"] for r in rows(wd)] == ["finished", "finished"]
  assert "[1/2] run-000 width=2 seed=0 -> psnr=" in first.stdout
  # A run that was cut short (state says running, no metrics) is continued first.
  state_path = os.path.join(wd, "sweep_state.json")
  state = json.load(open(state_path))
  state["runs"].append({"name": "run-002", "params": {"config.model.width": 3, "config.seed": 0},
                        "status": "running"})
  json.dump(state, open(state_path, "w"))
  second = run_cli("experiments.sweep", sweep, "--workdir", wd, *FAST)
  assert second.returncode == 0, second.stderr
  got = rows(wd)
  assert [r["run"] for r in got] == ["run-000", "run-001", "run-002", "run-003"]
  assert {(r["config.model.width"], r["config.seed"]) for r in got} == {
      ("2", "0"), ("2", "1"), ("3", "0"), ("3", "1")}
  assert float(got[2]["value"]) > float(got[0]["value"])  # width 3 beats width 2
  again = run_cli("experiments.sweep", sweep, "--workdir", wd, *FAST)
  assert again.returncode == 0 and len(rows(wd)) == 4  # nothing rerun

  fig = run_cli("experiments.grid_figure", wd, "--out", str(tmp_path / "grid.png"))
  assert fig.returncode == 0, fig.stderr
  assert "| 4 | 0.06% / " in fig.stdout and "(n=2)" in fig.stdout
  assert os.path.getsize(tmp_path / "grid.png") > 1000


@pytest.mark.slow
def test_a_crashing_run_is_recorded_and_the_sweep_goes_on(tmp_path):
  spec = dict(TINY, parameters={"config.model.width": {"values": [40, 2]}})  # 40: refused
  wd = str(tmp_path / "sweep")
  proc = run_cli("experiments.sweep", write(tmp_path, spec), "--workdir", wd, *FAST)
  assert proc.returncode == 0, proc.stderr
  got = rows(wd)
  assert [r["status"] for r in got] == ["failed", "finished"]
  assert "2^40" in got[0]["error"]


@pytest.mark.parametrize("mutate,match", [
    (lambda s: s["parameters"].update({"config.model.widht": {"values": [2]}}), "unknown config key 'config.model.widht'"),
    (lambda s: s.update(method="hyperband"), "use grid, random or bayes"),
    (lambda s: s.update(command=["python", "-m", "experiments.run"]), "no '--config"),
])
def test_bad_sweep_files_fail_before_any_run(tmp_path, mutate, match):
  spec = json.loads(json.dumps(TINY))
  mutate(spec)
  wd = tmp_path / "sweep"
  assert match in error_line(run_cli("experiments.sweep", write(tmp_path, spec), "--workdir", str(wd)))
  assert not (wd / "runs").exists()


@pytest.mark.slow
def test_malformed_yaml_and_foreign_directory(tmp_path):
  bad = tmp_path / "bad.yaml"
  bad.write_text("method: grid\nparameters: [unclosed\n")
  assert "not valid YAML" in error_line(run_cli("experiments.sweep", str(bad), "--workdir", str(tmp_path / "x")))
  wd = str(tmp_path / "sweep")
  assert run_cli("experiments.sweep", write(tmp_path, TINY), "--workdir", wd, "--max-runs", "1",
                 *FAST).returncode == 0
  other = dict(TINY, parameters={"config.seed": {"values": [5]}})
  assert "different YAML" in error_line(
      run_cli("experiments.sweep", write(tmp_path, other, "o.yaml"), "--workdir", wd, *FAST))
  assert "unknown config key" in error_line(
      run_cli("experiments.sweep", write(tmp_path, TINY), "--workdir", wd, "--override", "config.nope=1"))


@pytest.mark.parametrize("name", ["compress_grid", "compress_grid_thesis", "compress_grid_quick", "mnist_generation",
                                  "mnist_smoke_search", "cifar10_generation", "vae_mnist",
                                  "mnist_generation_local", "vae_mnist_local"])
def test_shipped_sweeps_name_real_keys(name):
  from dfm_flax import files
  from experiments import sweep
  path = os.path.join(ROOT, "sweeps", f"{name}.yaml")
  spec = sweep.load_sweep(path)
  config = files.load_config(sweep.config_file(spec, path))
  sweep.check_keys(config, spec["parameters"], path)
  assert "${args}" in spec["command"]


def test_bayes_search_proposes_from_its_history():
  from experiments import sweep
  spec = sweep.load_sweep(os.path.join(ROOT, "sweeps", "mnist_generation.yaml"))
  lam = spec["parameters"]["config.model.lam"]
  history = []
  for i in range(4):
    params = sweep.propose(spec, history)
    assert lam["min"] <= params["config.model.lam"] <= lam["max"]
    history.append({"name": f"run-{i}", "params": params, "status": "finished", "metric": float(i)})


def test_metric_names_reach_keys_that_hold_slashes():
  from experiments.sweep import flat_metric
  m = {"psnr": 20.5, "fid": {"classifier/gmm": 3.0}, "a": {"b": {"c": 1}}, "ok": True}
  assert flat_metric(m, "psnr") == 20.5
  assert flat_metric(m, "fid/classifier/gmm") == 3.0
  assert flat_metric(m, "a/b/c") == 1
  for missing in ("fid/classifier", "fid/inception/gmm", "nope", "ok", "psnr/x"):
    assert flat_metric(m, missing) is None


def test_progress_lines_tell_apart_keys_that_end_alike():
  from experiments.sweep import short_names
  names = short_names(["config.optim.lr", "config.optim.groups.latent.lr", "config.model.width"])
  assert names == {"config.optim.lr": "optim.lr", "config.optim.groups.latent.lr": "latent.lr",
                   "config.model.width": "width"}
