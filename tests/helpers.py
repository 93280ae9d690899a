"""What several test modules share: running the entry points as a user would, reading a
run's outputs, and test data."""
import json
import os
import subprocess
import sys
import time

import numpy as np

from dfm_flax.nets import fourier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOKE = "experiments/compress.py:smoke"  # the quick compression run most tests make


def run_cli(module: str, *args: str, timeout: float = 300, env_extra=None,
            **popen) -> subprocess.CompletedProcess:
  env = dict(os.environ, WANDB_MODE="disabled", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  env.update(env_extra or {})
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                        **popen)


def popen_cli(module: str, *args: str) -> subprocess.Popen:
  env = dict(os.environ, WANDB_MODE="disabled", JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
  return subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          stdin=subprocess.DEVNULL)


def error_line(proc: subprocess.CompletedProcess) -> str:
  """The stderr of a failed run: must be one 'error: ...' line, no traceback."""
  assert proc.returncode != 0, proc.stdout + proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  lines = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
  assert len(lines) == 1, proc.stderr
  return lines[0]


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.json")) as f:
    return json.load(f)


def checkpoint_steps(workdir):
  d = os.path.join(workdir, "checkpoints")
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def wait_for_checkpoint(proc, workdir, min_step, timeout=120):
  deadline = time.time() + timeout
  while time.time() < deadline:
    steps = checkpoint_steps(workdir)
    if steps and steps[-1] >= min_step:
      return steps[-1]
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.02)
  raise AssertionError("no checkpoint appeared")


def laplace_params(width=6, depth=4, channels=3, seed=0):
  rng = np.random.default_rng(seed)
  return [(rng.laplace(0, 0.05, (r, n)).astype(np.float32), rng.laplace(0, 0.05, (r, n)).astype(np.float32))
          for r, n in fourier.param_shapes(width, depth, channels)]
