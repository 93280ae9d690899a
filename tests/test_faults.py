"""Faults injected into real runs: races for one workdir, stale locks, damaged and
half-written checkpoints, SIGKILL again and again, a full disk. Each ends in one clear line
and the right exit code, or in the uninterrupted run's metrics, with nothing written lost."""
import errno
import glob
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

from dfm_flax.errors import UserError
from dfm_flax.loop import workdir as workdir_lib
from tests import helpers
from tests.helpers import SMOKE, error_line, run_cli

KEYS = ("psnr", "ssim", "mse", "final_loss")


def same_metrics(a: dict, b: dict) -> None:
  for key in KEYS:
    assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key


def dead_pid() -> int:
  proc = subprocess.Popen([sys.executable, "-c", "pass"])
  proc.wait()
  return proc.pid


# --- the lock, in process --------------------------------------------------------------
def test_a_second_holder_is_refused_naming_the_first(tmp_path):
  with workdir_lib.hold(str(tmp_path)):
    holder = json.loads((tmp_path / ".lock").read_text())
    assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
    # The same process again (another run in it) is refused too: the lock is the file's.
    with pytest.raises(UserError, match=rf"in use by process {os.getpid()} on "):
      workdir_lib.Lock(str(tmp_path)).acquire()
  assert not (tmp_path / ".lock").exists()  # released on exit


def test_a_lock_of_a_dead_process_is_taken_over_with_one_line(tmp_path, capsys):
  (tmp_path / ".lock").write_text(json.dumps(
      {"pid": dead_pid(), "host": socket.gethostname(), "started": time.time() - 60}))
  with workdir_lib.hold(str(tmp_path)):
    assert json.loads((tmp_path / ".lock").read_text())["pid"] == os.getpid()
  assert "which is gone; taking it over" in capsys.readouterr().err


def test_a_lock_held_on_another_host_is_refused_with_how_to_clear_it(tmp_path):
  (tmp_path / ".lock").write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": 0}))
  with pytest.raises(UserError, match=r"on elsewhere .*if that host is gone, delete"):
    workdir_lib.Lock(str(tmp_path)).acquire()
  assert (tmp_path / ".lock").exists()


def test_a_lock_never_released_by_a_failed_run_is_released(tmp_path):
  with pytest.raises(RuntimeError):
    with workdir_lib.hold(str(tmp_path)):
      raise RuntimeError("the run failed")
  assert not (tmp_path / ".lock").exists()


@pytest.mark.parametrize("make, says", [
    (lambda p: p.write_text("x"), "is a file, not a directory"),
    (lambda p: (p.mkdir(), p.chmod(0o500)), "is not writable"),
])
def test_a_workdir_that_cannot_be_one_is_refused_in_one_line(tmp_path, make, says):
  if says == "is not writable" and os.geteuid() == 0:
    pytest.skip("root writes anywhere")
  wd = tmp_path / "wd"
  make(wd)
  proc = run_cli("experiments.run", "--config", SMOKE, "--workdir", str(wd))
  assert says in error_line(proc)


# --- two runs, one workdir -------------------------------------------------------------
@pytest.mark.slow
def test_two_runs_racing_for_one_workdir_one_is_refused_and_nothing_is_written_twice(tmp_path):
  wd = str(tmp_path / "run")
  args = ["--config", SMOKE, "--workdir", wd, "--config.train.steps=200",
          "--config.train.checkpoint_every=10", "--config.train.log_every=10"]
  first = helpers.popen_cli("experiments.run", *args)
  helpers.wait_for_checkpoint(first, wd, 10)
  second = run_cli("experiments.run", *args)
  assert f"in use by process {first.pid} on {socket.gethostname()}" in error_line(second)
  out, err = first.communicate(timeout=300)
  assert first.returncode == 0, err
  steps = [json.loads(line)["step"] for line in open(os.path.join(wd, "history.jsonl"))]
  assert steps == sorted(set(steps))  # every logged step once
  assert not os.path.exists(os.path.join(wd, ".lock"))


@pytest.mark.slow
def test_a_run_takes_over_the_lock_of_a_killed_run_and_finishes(tmp_path):
  wd = str(tmp_path / "run")
  args = ["--config", SMOKE, "--workdir", wd]
  proc = helpers.popen_cli("experiments.run", *args, "--config.train.steps=2000")
  while not os.path.exists(os.path.join(wd, ".lock")):
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert os.path.exists(os.path.join(wd, ".lock"))  # SIGKILL leaves it behind
  rerun = run_cli("experiments.run", *args, "--config.train.steps=2000", "--config.train.stop_at=30")
  assert rerun.returncode == 0, rerun.stderr
  assert "which is gone; taking it over" in rerun.stderr


# --- damaged checkpoints ----------------------------------------------------------------
@pytest.fixture(scope="module")
def whole(tmp_path_factory):
  """An uninterrupted smoke run with a checkpoint every 10 steps: the metrics to match."""
  wd = str(tmp_path_factory.mktemp("whole") / "run")
  proc = run_cli("experiments.run", "--config", SMOKE, "--workdir", wd,
                 "--config.train.checkpoint_every=10")
  assert proc.returncode == 0, proc.stderr
  return helpers.read_metrics(wd)


def _damage(checkpoint_dir: str) -> list[str]:
  """Remove the array files of a checkpoint's model (as a disk error or a careless rm)."""
  gone = [p for p in glob.glob(os.path.join(checkpoint_dir, "model", "**", "*"), recursive=True)
          if os.path.isfile(p) and "metadata" not in os.path.basename(p).lower()]
  for p in gone[: max(1, len(gone) // 2)]:
    os.remove(p)
  return gone


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["missing files", "garbage"])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_before_it(
    tmp_path, whole, damage):
  wd = str(tmp_path / "run")
  args = ["--config", SMOKE, "--workdir", wd, "--config.train.checkpoint_every=10"]
  assert run_cli("experiments.run", *args, "--config.train.stop_at=50").returncode == 0
  newest, before = helpers.checkpoint_steps(wd)[-1], helpers.checkpoint_steps(wd)[-2]
  victim = os.path.join(wd, "checkpoints", str(newest))
  if damage == "missing files":
    _damage(victim)
  else:
    for p in glob.glob(os.path.join(victim, "model", "**", "*"), recursive=True):
      if os.path.isfile(p):
        with open(p, "wb") as f:
          f.write(b"garbage")
  kept = sorted(os.path.relpath(p, victim) for p in glob.glob(os.path.join(victim, "**", "*"),
                                                             recursive=True))
  rerun = run_cli("experiments.run", *args)
  assert rerun.returncode == 0, rerun.stderr
  assert "Traceback" not in rerun.stderr
  assert f"checkpoints/{newest} cannot be restored" in rerun.stderr
  assert f"resumed from checkpoint at step {before}" in rerun.stderr
  aside = glob.glob(os.path.join(wd, "checkpoints", f"{newest}.damaged-*"))
  assert len(aside) == 1  # set aside, never deleted: every file it had is still there
  assert sorted(os.path.relpath(p, aside[0]) for p in glob.glob(os.path.join(aside[0], "**", "*"),
                                                               recursive=True)) == kept
  same_metrics(helpers.read_metrics(wd), whole)


@pytest.mark.slow
def test_when_no_checkpoint_restores_the_run_is_refused_in_one_line(tmp_path):
  wd = str(tmp_path / "run")
  args = ["--config", SMOKE, "--workdir", wd, "--config.train.checkpoint_every=10"]
  assert run_cli("experiments.run", *args, "--config.train.stop_at=20").returncode == 0
  for step in helpers.checkpoint_steps(wd):
    _damage(os.path.join(wd, "checkpoints", str(step)))
  line = error_line(run_cli("experiments.run", *args))
  assert "no checkpoint in" in line and "can be restored" in line
  assert len(glob.glob(os.path.join(wd, "checkpoints", "*.damaged-*"))) == 2


@pytest.mark.slow
def test_sampling_reads_past_a_damaged_newest_checkpoint_without_renaming_it(tmp_path):
  wd = str(tmp_path / "gen")
  proc = run_cli("experiments.run", "--config", "experiments/vae_mnist.py:smoke", "--workdir", wd)
  assert proc.returncode == 0, proc.stderr
  newest = helpers.checkpoint_steps(wd)[-1]
  _damage(os.path.join(wd, "checkpoints", str(newest)))
  out = str(tmp_path / "s.png")
  proc = run_cli("experiments.sample", "--workdir", wd, "--out", out, "--num", "4",
                 "--interpolate", "0")
  assert proc.returncode == 0, proc.stderr
  assert "trying an older checkpoint" in proc.stderr and os.path.exists(out)
  assert os.path.isdir(os.path.join(wd, "checkpoints", str(newest)))  # a reader renames nothing


@pytest.mark.slow
def test_a_half_written_temporary_checkpoint_is_set_aside(tmp_path, whole):
  wd = str(tmp_path / "run")
  args = ["--config", SMOKE, "--workdir", wd, "--config.train.checkpoint_every=10"]
  assert run_cli("experiments.run", *args, "--config.train.stop_at=30").returncode == 0
  tmp = os.path.join(wd, "checkpoints", "40.orbax-checkpoint-tmp-1234")
  os.makedirs(os.path.join(tmp, "model"))
  rerun = run_cli("experiments.run", *args)
  assert rerun.returncode == 0, rerun.stderr
  assert "was never finished" in rerun.stderr
  assert glob.glob(os.path.join(wd, "checkpoints", "40.partial-1234.damaged-*", "model"))
  same_metrics(helpers.read_metrics(wd), whole)


# --- SIGKILL again and again -------------------------------------------------------------
@pytest.mark.slow
def test_sigkill_at_random_points_again_and_again_ends_with_the_uninterrupted_metrics(
    tmp_path, whole):
  wd = str(tmp_path / "run")
  args = ["--config", SMOKE, "--workdir", wd, "--config.train.checkpoint_every=10"]
  rng = random.Random(0)
  kills = 0
  while kills < 4:
    proc = helpers.popen_cli("experiments.run", *args)
    while not os.path.exists(os.path.join(wd, ".lock")) and proc.poll() is None:
      time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 4.0))  # anywhere: start-up, a step, a checkpoint save
    if proc.poll() is not None:
      break  # it finished first
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    kills += 1
  rerun = run_cli("experiments.run", *args)
  assert rerun.returncode == 0, rerun.stderr
  same_metrics(helpers.read_metrics(wd), whole)


# --- a full disk ---------------------------------------------------------------------------
def test_a_full_disk_at_a_checkpoint_is_one_line_and_keeps_the_checkpoints_before(
    tmp_path, monkeypatch):
  from dfm_flax.loop import checkpoint, train
  from experiments.compress import get_config
  config = get_config("smoke")
  config.train.checkpoint_every = 10
  saves = []
  real_save = checkpoint.Checkpointer.save

  def save(self, step, *args, **kwargs):
    if step >= 30:
      raise OSError(errno.ENOSPC, "No space left on device")
    saves.append(step)
    return real_save(self, step, *args, **kwargs)

  monkeypatch.setattr(checkpoint.Checkpointer, "save", save)
  wd = str(tmp_path / "run")
  with pytest.raises(UserError, match=r"cannot save the checkpoint of step 30 .*No space left"):
    train.train_and_evaluate(config, wd)
  assert helpers.checkpoint_steps(wd) == [10, 20] == saves
  assert os.path.exists(os.path.join(wd, "config.json"))
  assert not os.path.exists(os.path.join(wd, ".lock"))  # released on the way out


# --- every value checked before work starts -------------------------------------------------
@pytest.mark.parametrize("override, says", [
    ("--config.train.steps=-5", "train.steps=-5 is not allowed: use at least 1"),
    ("--config.train.batch_size=0", "train.batch_size=0 is not allowed: use at least 1"),
    ("--config.optim.lr=-0.1", "optim.lr=-0.1 is not allowed: use a number of at least 0"),
    ("--config.guard.mode=loud", "guard.mode='loud' is not allowed: use one of recover"),
    ("--config.optim.b1=1.0", "optim.b1=1.0 is not allowed: use in [0, 1)"),
    ("--config.optim.warmup_steps=60", "optim.warmup_steps=60, train.steps=60 is not allowed"),
    ("--config.model.coord_range=(1.0,0.0)", "model.coord_range=(1.0, 0.0) is not allowed"),
])
def test_a_bad_value_is_one_line_naming_key_value_and_what_is_allowed(tmp_path, override, says):
  wd = tmp_path / "run"
  proc = run_cli("experiments.run", "--config", SMOKE, "--workdir", str(wd), override)
  assert proc.returncode == 2
  assert says in error_line(proc)
  assert not wd.exists()  # refused before anything was written


def test_the_schema_names_only_settings_the_configs_have():
  import importlib.util

  from dfm_flax.loop import schema
  from experiments.cli import EXPERIMENTS_DIR, experiment_configs
  keys = set()
  for name, variants in experiment_configs().items():
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(EXPERIMENTS_DIR, name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    for variant in variants:
      config = module.get_config(variant)
      schema.check(config)  # every shipped variant passes
      keys |= set(schema.present(config))
  assert set(schema.RULES) - keys == set()


@pytest.mark.parametrize("text, says", [
    ("def get_config(:\n", "line 1: invalid syntax"),
    ("def get_config():\n  return 1 / 0\n", "raised ZeroDivisionError"),
])
def test_a_broken_config_file_is_one_line(tmp_path, text, says):
  path = tmp_path / "broken.py"
  path.write_text(text)
  proc = run_cli("experiments.run", "--config", str(path), "--workdir", str(tmp_path / "run"))
  assert proc.returncode == 2 and says in error_line(proc)


def test_ctrl_c_outside_the_loop_is_one_line_and_exit_130(capsys):
  from experiments import cli

  def interrupted(argv):
    raise KeyboardInterrupt
  with pytest.raises(SystemExit) as exit_:
    cli.run_main(interrupted, [])
  assert exit_.value.code == 130
  assert capsys.readouterr().err.startswith("error: interrupted; what was written is kept")


def test_an_image_claiming_a_huge_size_is_one_line(tmp_path):
  import struct
  import zlib

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  bomb = tmp_path / "bomb.png"
  bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 100000, 100000,
                                                                   8, 2, 0, 0, 0))
                   + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))
  for module, args in (("experiments.run", ["--config", SMOKE, "--workdir", str(tmp_path / "r"),
                                            f"--config.image={bomb}"]),
                       ("experiments.codec", ["encode", str(bomb), "--out", str(tmp_path / "b.dfm")])):
    line = error_line(run_cli(module, *args))
    assert "possible decompression bomb" in line and "DFM_MAX_IMAGE_PIXELS" in line


# --- the codec's flags and paths ------------------------------------------------------------
@pytest.fixture
def small_png(tmp_path):
  from PIL import Image
  path = tmp_path / "small.png"
  Image.new("RGB", (32, 32), (200, 40, 40)).save(path)
  return str(path)


@pytest.mark.parametrize("bpp, says", [("0", "--bpp 0 is not allowed"),
                                       ("24", "below 24, the raw image's bits per pixel"),
                                       ("100", "--bpp 100 is not allowed")])
def test_codec_bpp_outside_the_raw_image_is_refused(tmp_path, small_png, bpp, says):
  out = tmp_path / "f.dfm"
  proc = run_cli("experiments.codec", "encode", small_png, "--out", str(out), "--bpp", bpp)
  assert says in error_line(proc)
  assert not out.exists() and not (tmp_path / "f.dfm.run").exists()


def test_codec_decode_makes_its_output_directory_and_refuses_an_unused_start(tmp_path):
  from dfm_flax.codec import fileformat
  from tests.helpers import laplace_params
  dfm = tmp_path / "f.dfm"
  dfm.write_bytes(fileformat.encode(laplace_params(3, 3), (8, 8, 3), 3, 3, bits=8))
  out = tmp_path / "new" / "dir" / "f.png"
  proc = run_cli("experiments.codec", "decode", str(dfm), "--out", str(out))
  assert proc.returncode == 0 and out.exists(), proc.stderr
  (tmp_path / "blocked").write_text("a file where the directory should be")
  line = error_line(run_cli("experiments.codec", "decode", str(dfm), "--out",
                            str(tmp_path / "blocked" / "f.png")))
  assert "is a file, not a directory" in line
  with pytest.raises(UserError, match="coded without a start"):
    fileformat.decode(dfm.read_bytes(), laplace_params(3, 3))


# --- the sweep runner ----------------------------------------------------------------------
def test_two_sweep_runners_never_share_a_directory(tmp_path):
  sweep_dir = str(tmp_path / "sweep")
  os.makedirs(sweep_dir)
  with workdir_lib.hold(sweep_dir):
    proc = run_cli("experiments.sweep", "sweeps/mnist_smoke_search.yaml", "--workdir", sweep_dir,
                   "--max-runs", "1")
  assert f"in use by process {os.getpid()}" in error_line(proc)
  assert not os.path.exists(os.path.join(sweep_dir, "runs"))
