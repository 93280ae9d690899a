"""Several processes, one run, on localhost: 2 processes x 2 CPU devices (gloo collectives)
against 1 process x 4 devices, checkpoints across process counts, a killed process, and
launches that must be refused."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from dfm_flax.parallel import processes as launcher
from tests.helpers import ROOT, run_cli

pytestmark = pytest.mark.slow  # Whole-run end-to-end tests (python -m pytest -m 'not slow' skips them).

COMPRESS = ["--config", "experiments/compress.py:smoke", "--config.train.checkpoint_every=20"]
# At the thesis init the MNIST nets are chaotic: the order of a sum alone moves the result
# (tests/test_sharding.py); a smaller init makes 1e-4 a test of the multi-process run.
MNIST = ["--config", "experiments/mnist.py:smoke", "--config.model.init_variance=2e-3"]
FOUR = {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}


def run_launch(processes, devices, args, timeout=300):
  return run_cli("experiments.launch", "--processes", str(processes), "--devices", str(devices),
                 "--cpu", "--grace", "30", "--", *args, timeout=timeout)


def metrics(wd):
  with open(os.path.join(wd, "metrics.json")) as f:
    return json.load(f)


def scalars(m):
  return {k: v for k, v in m.items() if isinstance(v, float) and k != "seconds"}


def test_two_and_four_processes_match_one(tmp_path):
  one = str(tmp_path / "1x4")
  assert run_cli("experiments.run", *COMPRESS, "--workdir", one, env_extra=FOUR).returncode == 0
  for processes, devices in ((2, 2), (4, 1)):
    wd = str(tmp_path / f"{processes}x{devices}")
    proc = run_launch(processes, devices, [*COMPRESS, "--workdir", wd])
    assert proc.returncode == 0, proc.stdout
    for key, value in scalars(metrics(one)).items():
      assert metrics(wd)[key] == pytest.approx(value, rel=1e-5), (processes, key)
    # Process 0 alone logs: one history row per log step, not one per process.
    history = open(os.path.join(wd, "history.jsonl")).read().splitlines()
    assert len(history) == 60 // 10
    # p1 prints no progress and no results. Gloo's C++ logging (which p1 may print) writes a
    # line in fragments that other output can split, so look for our lines, not for "[p1]".
    p1 = [line for line in proc.stdout.splitlines() if line.startswith("[p1]")]
    assert not [line for line in p1 if "compress:" in line or "psnr=" in line or "DFM" in line], p1


def test_mnist_on_two_processes_matches_one(tmp_path):
  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  assert run_cli("experiments.run", *MNIST, "--workdir", one, env_extra=FOUR).returncode == 0
  proc = run_launch(2, 2, [*MNIST, "--workdir", two])
  assert proc.returncode == 0, proc.stdout
  assert scalars(metrics(one)), metrics(one)
  for key, value in scalars(metrics(one)).items():
    assert metrics(two)[key] == pytest.approx(value, rel=1e-4, abs=1e-4), key


def _drop_last_checkpoint(wd):
  os.remove(os.path.join(wd, "metrics.json"))
  shutil.rmtree(os.path.join(wd, "checkpoints", "60"))


def test_checkpoints_move_between_process_counts(tmp_path):
  reference = str(tmp_path / "reference")
  assert run_cli("experiments.run", *COMPRESS, "--workdir", reference).returncode == 0
  # Written by 2 processes, resumed by 1; then written by 1, resumed by 2.
  two_then_one = str(tmp_path / "two_then_one")
  assert run_launch(2, 2, [*COMPRESS, "--workdir", two_then_one]).returncode == 0
  _drop_last_checkpoint(two_then_one)
  proc = run_cli("experiments.run", *COMPRESS, "--workdir", two_then_one)
  assert "resumed from checkpoint at step 40" in proc.stderr, proc.stderr
  one_then_two = str(tmp_path / "one_then_two")
  assert run_cli("experiments.run", *COMPRESS, "--workdir", one_then_two).returncode == 0
  _drop_last_checkpoint(one_then_two)
  proc = run_launch(2, 2, [*COMPRESS, "--workdir", one_then_two])
  assert "[p0] resumed from checkpoint at step 40" in proc.stdout, proc.stdout
  for wd in (two_then_one, one_then_two):
    for key, value in scalars(metrics(reference)).items():
      assert metrics(wd)[key] == pytest.approx(value, rel=1e-5), (wd, key)


def _start(args, processes=2, devices=2):
  port = launcher.free_port()
  env = dict(launcher.environment(devices, cpu=True), WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
  return [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for cmd in launcher.commands(args, processes, port)]


def test_a_killed_process_stops_the_others_and_the_run_resumes(tmp_path):
  wd = str(tmp_path / "run")
  args = [*COMPRESS, "--workdir", wd, "--config.train.steps=200", "--config.dist.heartbeat_s=5"]
  procs = _start(args)
  ckpt = os.path.join(wd, "checkpoints")
  deadline = time.time() + 120
  while not (os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt))):
    assert time.time() < deadline and procs[0].poll() is None, procs[0].communicate()
    time.sleep(0.1)
  procs[1].kill()
  killed_at = time.time()
  _, err = procs[0].communicate(timeout=60)  # Not a hang: bounded by dist.heartbeat_s.
  assert procs[0].returncode == 1
  assert time.time() - killed_at < 30
  assert "error: process 0: process 1 of 2 stopped" in err, err
  saved = max(int(n) for n in os.listdir(ckpt) if n.isdigit())
  assert saved < 200
  proc = run_launch(2, 2, args)  # Relaunched: it resumes from the last checkpoint.
  assert proc.returncode == 0, proc.stdout
  assert f"resumed from checkpoint at step {saved}" in proc.stdout
  assert metrics(wd)["steps"] == 200


def test_a_killed_coordinator_stops_the_others_too(tmp_path):
  wd = str(tmp_path / "run")
  procs = _start([*COMPRESS, "--workdir", wd, "--config.train.steps=2000",
                  "--config.dist.heartbeat_s=5"])
  ckpt = os.path.join(wd, "checkpoints")
  deadline = time.time() + 120
  while not (os.path.isdir(ckpt) and any(n.isdigit() for n in os.listdir(ckpt))):
    assert time.time() < deadline and procs[1].poll() is None, procs[1].communicate()
    time.sleep(0.1)
  procs[0].kill()  # process 0 hosts the coordination service
  killed_at = time.time()
  _, err = procs[1].communicate(timeout=60)
  assert procs[1].returncode != 0 and time.time() - killed_at < 30
  assert "process 0" in err or "leader task" in err, err[-2000:]


def _errors(procs, timeout=60):
  out = []
  for p in procs:
    _, err = p.communicate(timeout=timeout)
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert p.returncode == 1 and len(lines) == 1 and "Traceback" not in err, err
    out.append(lines[0])
  return out


def _command(pid, num, coordinator, extra=()):
  return [sys.executable, "-m", "experiments.run", *COMPRESS, *extra,
          f"--config.dist.coordinator={coordinator}", f"--config.dist.num_processes={num}",
          f"--config.dist.process_id={pid}", "--config.dist.timeout_s=5"]


def _popen(commands):
  env = dict(launcher.environment(2, cpu=True), WANDB_MODE="disabled")
  return [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True) for c in commands]


def _snapshot(wd):
  return sorted((os.path.relpath(os.path.join(d, f), wd), os.path.getmtime(os.path.join(d, f)))
                for d, _, files in os.walk(wd) for f in files)


def test_bad_launches_are_refused_on_every_process(tmp_path):
  wd = str(tmp_path / "run")  # A run with checkpoints that no bad launch may touch.
  assert run_cli("experiments.run", *COMPRESS, "--workdir", wd).returncode == 0
  before = _snapshot(wd)
  w = ["--workdir", wd]
  port = launcher.free_port()
  tic = time.time()
  [line] = _errors(_popen([_command(5, 2, f"127.0.0.1:{port}", w)]))
  assert "process id 5 is out of range for 2 processes" in line
  [line] = _errors(_popen([_command(1, 2, f"127.0.0.1:{port}", w)]))  # nobody at that port
  assert "no coordinator answers at 127.0.0.1" in line
  [line] = _errors(_popen([_command(0, 2, f"127.0.0.1:{port}", w)]))  # the others never come
  assert "did not all join the run" in line
  port = launcher.free_port()
  with socket.socket() as busy:
    busy.bind(("", port))
    busy.listen()
    [line] = _errors(_popen([_command(0, 2, f"127.0.0.1:{port}", w)]))
    assert f"coordinator port {port} is in use" in line
  [line] = _errors(_popen([_command(0, 2, "no-port-here", w)]))
  assert "dist.coordinator must be HOST:PORT" in line
  port = launcher.free_port()
  lines = _errors(_popen([_command(0, 2, f"127.0.0.1:{port}", w), _command(1, 3, f"127.0.0.1:{port}", w)]))
  assert all("num_processes" in line for line in lines), lines
  port = launcher.free_port()
  lines = _errors(_popen([_command(0, 2, f"127.0.0.1:{port}", w),
                          _command(1, 2, f"127.0.0.1:{port}", [*w, "--config.seed=1"])]))
  assert all("different configs (seed:" in line for line in lines), lines
  assert time.time() - tic < 120  # Each case is bounded by dist.timeout_s (5 s here).
  assert _snapshot(wd) == before


def test_slurm_environment_starts_a_multi_process_run(tmp_path):
  """What `srun` sets (experiments/slurm.sbatch): no dist flags, JAX finds the coordinator."""
  wd, reference = str(tmp_path / "srun"), str(tmp_path / "reference")
  assert run_cli("experiments.run", *COMPRESS, "--workdir", reference, env_extra=FOUR).returncode == 0
  env = dict(launcher.environment(2, cpu=True), WANDB_MODE="disabled", SLURM_JOB_ID="4321",
             SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2")
  procs = [subprocess.Popen([sys.executable, "-m", "experiments.run", *COMPRESS, "--workdir", wd],
                            cwd=ROOT, env=dict(env, SLURM_PROCID=str(i), SLURM_LOCALID=str(i)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], outs
  assert "psnr=" in outs[0][0] and "psnr=" not in outs[1][0]  # process 0 alone reports
  for key, value in scalars(metrics(reference)).items():
    assert metrics(wd)[key] == pytest.approx(value, rel=1e-5), key
