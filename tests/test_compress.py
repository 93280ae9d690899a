"""The compression experiment end to end, as a user runs it: outputs, resume, bad input."""
import json
import os
import signal
import time

import pytest

from tests.helpers import (
  SMOKE,
  checkpoint_steps,
  error_line,
  popen_cli,
  read_metrics,
  run_cli,
  wait_for_checkpoint,
)

KEYS = {"psnr", "ssim", "mse", "num_params", "bytes", "bpp", "percent_of_raw", "steps", "seconds", "jpeg"}


def test_smoke_run_writes_everything_and_is_not_redone(tmp_path):
  wd = str(tmp_path / "run")
  proc = run_cli("experiments.run", "--config", SMOKE, "--workdir", wd)
  assert proc.returncode == 0, proc.stderr
  m = read_metrics(wd)
  assert KEYS <= set(m)
  assert set(m["jpeg"]) >= {"quality", "bytes", "bpp", "psnr", "ssim"}
  # Smoke net: width 4, depth 4 on the 400x400 RGB default image.
  assert m["num_params"] == 2 * 4 * 4 + 2 * 2 * 16 * 4 + 2 * 16 * 3
  assert m["bytes"] == 4 * m["num_params"]
  assert m["percent_of_raw"] == pytest.approx(100 * m["bytes"] / (400 * 400 * 3))
  assert m["bpp"] == pytest.approx(8 * m["bytes"] / (400 * 400))
  assert m["steps"] == 60
  for name in ("config.json", "reconstruction.png", "comparison.png", "training.png"):
    assert os.path.exists(os.path.join(wd, name)), name
  history = [json.loads(line) for line in open(os.path.join(wd, "history.jsonl"))]
  assert history[-1]["loss"] < history[0]["loss"]  # It learned something.
  # The PSNR reported is that of the 8-bit reconstruction written beside it, against the
  # built-in image (an independent computation: numpy on the two PNG-level images).
  import numpy as np
  from PIL import Image

  from dfm_flax.data import images
  rec = np.asarray(Image.open(os.path.join(wd, "reconstruction.png")), np.float64)
  ref = np.round(images.default_image() * 255).astype(np.float64)
  assert m["psnr"] == pytest.approx(10 * np.log10(255**2 / np.mean((rec - ref) ** 2)), abs=1e-6)
  assert m["mse"] == pytest.approx(np.mean((rec - ref) ** 2) / 255**2, rel=1e-6)
  # 60 steps of the thesis recipe leave the net near its flat start: it says so. The flat
  # image's PSNR, independently: the 8-bit mean colour against the 8-bit image.
  flat = np.round(ref.reshape(-1, 3).mean(0) / 255 * 255)
  flat_db = 10 * np.log10(255**2 / np.mean((flat - ref) ** 2))
  assert m["flat_psnr"] == pytest.approx(flat_db, abs=0.01)
  assert m["near_flat"] is (m["psnr"] < m["flat_psnr"] + 1) is True
  assert "warning: this fit ended within 1 dB of its image's flat mean colour" in proc.stderr

  before = os.path.getmtime(os.path.join(wd, "metrics.json"))
  again = run_cli("experiments.run", "--config", SMOKE, "--workdir", wd)
  assert again.returncode == 0 and "already finished" in again.stderr
  assert os.path.getmtime(os.path.join(wd, "metrics.json")) == before


@pytest.mark.slow
def test_sigkill_then_rerun_gives_the_uninterrupted_metrics(tmp_path):
  args = ["--config", SMOKE, "--config.train.steps=400", "--config.train.checkpoint_every=10"]
  whole = str(tmp_path / "whole")
  assert run_cli("experiments.run", *args, "--workdir", whole).returncode == 0

  killed = str(tmp_path / "killed")
  proc = popen_cli("experiments.run", *args, "--workdir", killed)
  wait_for_checkpoint(proc, killed, 30)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, "metrics.json"))
  resumed_from = checkpoint_steps(killed)[-1]
  assert 0 < resumed_from < 400

  rerun = run_cli("experiments.run", *args, "--workdir", killed)
  assert rerun.returncode == 0, rerun.stderr
  assert f"resumed from checkpoint at step {resumed_from}" in rerun.stderr
  a, b = read_metrics(whole), read_metrics(killed)
  for key in ("psnr", "ssim", "mse", "final_loss"):
    assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key


def test_ctrl_c_saves_a_checkpoint_and_exits(tmp_path):
  wd = str(tmp_path / "run")
  proc = popen_cli("experiments.run", "--config", SMOKE, "--workdir", wd,
                   "--config.train.steps=5000", "--config.train.checkpoint_every=1000")
  # The first checkpoint would come at step 1000: wait for the loop to start instead.
  deadline = time.time() + 120
  while not os.path.exists(os.path.join(wd, "history.jsonl")) and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 130, err
  assert "interrupted; checkpoint saved at step" in err
  step = int(err.split("checkpoint saved at step ")[1].split(";")[0])
  assert checkpoint_steps(wd)[-1] == step > 0


@pytest.mark.parametrize("override,match", [
    ("--config.model.widht=3", "unknown config key in --config.model.widht=3"),
    ("--config.image=/no/such/file.png", "image not found"),
    ("--config.model.width=30", "2^30"),
    ("--config.model.width=19", "GiB"),
    ("--config.model.method=fft", "method"),
])
def test_bad_input_is_one_clear_line(tmp_path, override, match):
  wd = str(tmp_path / "run")
  proc = run_cli("experiments.run", "--config", SMOKE, "--workdir", wd, override)
  assert match in error_line(proc)
  assert not os.path.exists(os.path.join(wd, "checkpoints"))


def test_not_an_image_and_a_changed_config(tmp_path):
  bogus = tmp_path / "notes.png"
  bogus.write_text("these are notes, not pixels")
  wd = str(tmp_path / "run")
  assert "not an image" in error_line(
      run_cli("experiments.run", "--config", SMOKE, "--workdir", wd, f"--config.image={bogus}"))
  assert run_cli("experiments.run", "--config", SMOKE, "--workdir", wd,
                 "--config.train.steps=20").returncode == 0
  assert "different config" in error_line(
      run_cli("experiments.run", "--config", SMOKE, "--workdir", wd, "--config.train.steps=30"))
  assert read_metrics(wd)["steps"] == 20  # The finished run is untouched.


def test_gray_image_trains_with_one_channel(tmp_path):
  import numpy as np
  from PIL import Image
  y, x = np.mgrid[0:40, 0:48]
  Image.fromarray((127 + 100 * np.sin(x / 7) * np.cos(y / 5)).astype(np.uint8)).save(tmp_path / "g.png")
  wd = str(tmp_path / "run")
  proc = run_cli("experiments.run", "--config", SMOKE, "--workdir", wd,
                 f"--config.image={tmp_path / 'g.png'}")
  assert proc.returncode == 0, proc.stderr
  m = read_metrics(wd)
  assert m["channels"] == 1
  assert m["percent_of_raw"] == pytest.approx(100 * m["bytes"] / (40 * 48))


def test_nan_loss_stops_with_a_clear_message(tmp_path):
  from dfm_flax.errors import UserError
  from dfm_flax.loop.train import train_and_evaluate
  from experiments.compress import get_config
  config = get_config("smoke")
  config.optim.lr = 1e38  # (a NaN init variance is refused before training: the schema)
  with pytest.raises(UserError, match="loss became nan at step"):
    train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(os.path.join(tmp_path, "checkpoints", "20"))


def test_wandb_offline_logs_without_asking(tmp_path):
  wd = tmp_path / "run"
  env = {"WANDB_MODE": "offline", "WANDB_API_KEY": "", "HOME": str(tmp_path)}
  proc = run_cli("experiments.run", "--config", SMOKE, "--workdir", str(wd), env_extra=env)
  assert proc.returncode == 0, proc.stderr
  runs = list((wd / "wandb").glob("offline-run-*"))
  assert len(runs) == 1 and any(runs[0].glob("*.wandb"))
  assert (wd / "wandb_id.txt").read_text().strip() in runs[0].name


@pytest.mark.slow
def test_crash_between_last_checkpoint_and_metrics_is_recovered(tmp_path):
  wd = str(tmp_path / "run")
  assert run_cli("experiments.run", "--config", SMOKE, "--workdir", wd).returncode == 0
  before = read_metrics(wd)
  os.remove(os.path.join(wd, "metrics.json"))  # e.g. killed during the evaluation
  proc = run_cli("experiments.run", "--config", SMOKE, "--workdir", wd)
  assert proc.returncode == 0, proc.stderr
  assert "resumed from checkpoint at step 60" in proc.stderr
  after = read_metrics(wd)
  assert after["psnr"] == before["psnr"] and after["steps"] == 60


def test_wandb_run_id_from_a_sweep_agent(tmp_path):
  wd = tmp_path / "run"
  env = {"WANDB_MODE": "offline", "WANDB_API_KEY": "", "HOME": str(tmp_path), "WANDB_RUN_ID": "agent123"}
  proc = run_cli("experiments.run", "--config", SMOKE, "--workdir", str(wd), env_extra=env)
  assert proc.returncode == 0, proc.stderr
  assert [p.name.endswith("agent123") for p in (wd / "wandb").glob("offline-run-*")] == [True]
