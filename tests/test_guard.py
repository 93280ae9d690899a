"""The divergence guard (dfm_flax/loop/guard.py) in the shared loop: a forced collapse is
recovered, a healthy run is unchanged by it, and resume stays exact with it on."""
import json
import math
import os
import signal

import pytest

from tests.helpers import popen_cli, read_metrics, run_cli, wait_for_checkpoint

# Learns for ~100 steps (lr still small in a long warm-up), then the absurd peak lr
# (8 / 2^m per layer) makes it collapse to the flat mean colour.
FORCED = ["--config", "experiments/compress.py:smoke", "--config.optim.scale_by_terms=True",
          "--config.optim.lr=8", "--config.optim.schedule=cosine",
          "--config.optim.warmup_steps=2000", "--config.train.steps=4000",
          "--config.train.stop_at=600", "--config.train.checkpoint_every=100",
          "--config.model.coord_range=(0.0,0.5)", "--config.guard.mode=recover"]


def flat_psnr():
  """PSNR of the built-in image's mean colour: where a collapsed net ends."""
  from dfm_flax.data import images
  return images.flat_psnr(images.default_image())


def history(wd):
  with open(os.path.join(wd, "history.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_forced_collapse_is_recovered_and_detect_mode_reports_it(tmp_path):
  flat = flat_psnr()
  detect = str(tmp_path / "detect")
  proc = run_cli("experiments.run", *FORCED, "--config.guard.mode=detect", "--workdir", detect)
  assert proc.returncode == 0, proc.stderr
  m = read_metrics(detect)
  assert m["collapsed"] is True and m["recoveries"] == 0
  assert m["psnr"] < flat + 1  # Really collapsed: the flat image.
  assert "warning: this run ended collapsed" in proc.stderr

  recover = str(tmp_path / "recover")
  proc = run_cli("experiments.run", *FORCED, "--config.guard.mode=recover", "--workdir", recover)
  assert proc.returncode == 0, proc.stderr
  m = read_metrics(recover)
  assert m["collapsed"] is False and 1 <= m["recoveries"] <= 4
  assert m["psnr"] > flat + 4
  lines = [line for line in proc.stderr.splitlines() if line.startswith("guard: ")]
  assert len(lines) == m["recoveries"]
  events = [r for r in history(recover) if r.get("event") == "rollback"]
  assert [e["recovery"] for e in events] == list(range(1, m["recoveries"] + 1))
  assert events[-1]["lr_scale"] == 0.5 ** m["recoveries"]
  # The history holds the path the run went on from: steps increase.
  steps = [r["step"] for r in history(recover) if "loss" in r]
  assert steps == sorted(steps) and steps[-1] == 600
  assert "warning" not in proc.stderr


@pytest.mark.slow
def test_healthy_run_is_bit_identical_with_the_guard_on_and_off(tmp_path):
  runs = {}
  for mode in ("recover", "off"):
    wd = str(tmp_path / mode)
    proc = run_cli("experiments.run", "--config", "experiments/compress.py:smoke",
                   "--config.train.steps=120", f"--config.guard.mode={mode}", "--workdir", wd)
    assert proc.returncode == 0, proc.stderr
    runs[mode] = read_metrics(wd)
  on, off = runs["recover"], runs["off"]
  assert on["recoveries"] == 0 and on["collapsed"] is False
  for key in ("psnr", "ssim", "mse", "final_loss"):
    assert on[key] == off[key], key  # Exactly: the guard only watches a healthy run.


@pytest.mark.slow
def test_resume_with_the_guard_on_is_exact(tmp_path):
  whole = str(tmp_path / "whole")
  assert run_cli("experiments.run", *FORCED, "--workdir", whole).returncode == 0
  a = read_metrics(whole)
  assert a["recoveries"] >= 2

  # Stopped between a rollback and the next good state, then continued: the checkpoint
  # must carry the guard's state and its last good weights.
  split = str(tmp_path / "split")
  events = [r for r in history(whole) if r.get("event") == "rollback"]
  cut = next(((e["step"] // 100 + 1) * 100 for e in events), 200)
  assert run_cli("experiments.run", *FORCED, f"--config.train.stop_at={cut}",
                 "--workdir", split).returncode == 0
  rerun = run_cli("experiments.run", *FORCED, "--workdir", split)
  assert rerun.returncode == 0, rerun.stderr
  assert f"resumed from checkpoint at step {cut}" in rerun.stderr

  killed = str(tmp_path / "killed")
  proc = popen_cli("experiments.run", *FORCED, "--workdir", killed)
  wait_for_checkpoint(proc, killed, 300)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert run_cli("experiments.run", *FORCED, "--workdir", killed).returncode == 0

  for wd in (split, killed):
    b = read_metrics(wd)
    assert b["recoveries"] == a["recoveries"], wd
    for key in ("psnr", "ssim", "mse", "final_loss"):
      assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), (wd, key)


def test_guard_decisions():
  from dfm_flax.loop import guard
  cfg = guard.defaults()
  g = guard.DivergenceGuard(cfg, reference_loss=1.0)
  g.keep = lambda step, model, optimizer: setattr(g.state, "good_step", step)  # No arrays.
  g.kept_state = "kept"
  acts = [g.observe(s, loss, None, None) for s, loss in
          [(10, 0.5), (20, 0.1), (30, 0.12), (40, 0.5), (50, 0.5), (60, 0.5)]]
  # 0.5 > sqrt(0.1 * 1.0): lost more than half of its 10 dB gain over flat, 3 times in a row.
  assert acts == ["ok"] * 5 + ["rollback"] and g.state.good_step == 30
  g2 = guard.DivergenceGuard(cfg)  # No reference: only the ratio counts.
  g2.kept_state = "kept"
  g2.keep = g.keep
  assert [g2.observe(s, x, None, None) for s, x in [(1, 0.1), (2, 0.35), (3, 0.35), (4, 0.35)]] \
      == ["ok"] * 4
  assert g2.observe(5, math.nan, None, None) == "rollback"  # Non-finite: at once.
  g2.state.bad = 0
  assert [g2.observe(s, x, None, None) for s, x in [(6, 0.5), (7, 0.5), (8, 0.5)]] \
      == ["ok", "ok", "rollback"]
  g3 = guard.DivergenceGuard(guard.config_of({"guard": {"mode": "detect"}}))
  for s in range(1, 5):
    assert g3.observe(s, 1.0 if s == 1 else 10.0, None, None) == "ok"
  assert g3.state.collapsed
  # The last step: one unhealthy loss is a collapse (no patience left to wait out).
  g4 = guard.DivergenceGuard(cfg, reference_loss=1.0)
  g4.keep, g4.kept_state = g.keep, "kept"
  assert [g4.observe(s, x, None, None) for s, x in [(10, 0.1), (20, 0.5)]] == ["ok", "ok"]
  assert g4.observe(30, 0.5, None, None, final=True) == "rollback"
  g5 = guard.DivergenceGuard(guard.config_of({"guard": {"mode": "detect"}}), reference_loss=1.0)
  assert g5.observe(10, 0.1, None, None) == "ok"
  assert g5.observe(20, 0.11, None, None, final=True) == "ok" and not g5.state.collapsed
  assert g5.observe(20, 0.5, None, None, final=True) == "ok" and g5.state.collapsed
  # A net that never got 3 dB past flat (hubble's 9x6 fit at step 600: 0.2 dB) and then
  # fell below flat: within 4x its best, but worse than its own mean colour by > 1 dB.
  g6 = guard.DivergenceGuard(cfg, reference_loss=0.0471)
  g6.keep = lambda step, model, optimizer: setattr(g6.state, "good_step", step)
  g6.kept_state = "kept"
  losses = [(100, 0.159), (300, 0.0447), (600, 0.0484), (700, 0.0621), (800, 0.060),
            (900, 0.089)]
  assert [g6.observe(s, x, None, None) for s, x in losses] == ["ok"] * 5 + ["rollback"]
  # Back to step 300, the last state better than flat: step 600 was healthy (0.1 dB below
  # flat) but no state to return to.
  assert g6.state.good_step == 300
  # Before it was ever better than flat (the first steps from a near-zero net), or within
  # 1 dB of flat, no alarm.
  g7 = guard.DivergenceGuard(cfg, reference_loss=0.0471)
  assert g7.healthy(0.159) and not g7.state.collapsed
  g7.state.best = 0.0447
  assert g7.healthy(0.058) and not g7.healthy(0.0600)
  state = guard.GuardState(best=math.inf, bad=2, recoveries=1, good_step=30)
  assert guard.GuardState.from_dict(json.loads(json.dumps(state.to_dict()))) == state


def test_each_rollback_lowers_the_lr_even_to_the_same_kept_step():
  from flax import nnx

  from dfm_flax.loop import guard, optim
  from dfm_flax.tasks.compress import Task as CompressTask
  from experiments.compress import get_config
  config = get_config("smoke")
  task = CompressTask(config)
  model = task.build_model(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optim.build(config.optim, 10), wrt=nnx.Param)
  g = guard.DivergenceGuard(guard.defaults(), reference_loss=1.0)
  assert g.observe(100, 0.1, model, optimizer) == "ok"  # Kept: step 100, lr x1.
  scales = []
  for _ in range(3):  # Three collapses at the last step, each before a new good step.
    assert g.observe(200, 0.9, model, optimizer, final=True) == "rollback"
    g.rollback(200, 0.9, model, optimizer)
    scales.append(optim.get_lr_scale(optimizer))
  assert scales == [0.5, 0.25, 0.125] and g.state.good_step == 100


def test_rollbacks_return_only_to_states_no_worse_than_flat():
  """Hubble's 9x6 cut fit: after a collapse at step 1,000 it was within 1 dB of flat, so
  healthy, at step 1,200, and each rollback to that copy collapsed again at step 1,300."""
  from dfm_flax.loop import guard
  g = guard.DivergenceGuard(guard.defaults(), reference_loss=0.0471)
  g.keep = lambda step, model, optimizer: setattr(g.state, "good_step", step)
  g.kept_state = "kept"
  losses = [(100, 0.1587), (200, 0.0512), (300, 0.0447), (400, 0.0464), (500, 0.0454),
            (700, 0.0397), (800, 0.0488), (900, 0.0502), (1000, 0.3644), (1100, 0.0679),
            (1200, 0.0560)]
  assert all(g.observe(s, x, None, None) == "ok" for s, x in losses)
  assert g.state.good_step == 700  # Not 1,200 (0.0560) nor 800-900 (worse than flat).
  assert g.observe(1300, 0.0617, None, None, final=True) == "rollback"
  # Before the run beats flat, every healthy state is kept (a fit starts far below flat).
  g2 = guard.DivergenceGuard(guard.defaults(), reference_loss=0.0471)
  g2.keep, g2.kept_state = (lambda step, model, optimizer: setattr(g2.state, "good_step", step)), "kept"
  assert g2.observe(100, 0.1587, None, None) == "ok" and g2.state.good_step == 100
