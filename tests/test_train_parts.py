"""Pieces of the shared loop: optimizer schedules, per-layer learning rates, W&B mode."""
import numpy as np
import pytest
from flax import nnx

from dfm_flax.loop import logs, optim, train
from dfm_flax.loop.train import make_train_step
from dfm_flax.nets import fourier
from dfm_flax.tasks.compress import Task as CompressTask
from dfm_flax.tasks.compress import init_variances
from experiments.compress import get_config


@pytest.mark.parametrize("depth_ref, factor", [(0, 1.0), (6, 1.0), (3, 0.75)])
def test_scale_by_terms_gives_each_layer_lr_over_2_to_the_m(depth_ref, factor):
  config = get_config("smoke")  # width 4, depth 4: layers have 4, 16, 16, 16 terms.
  config.optim.scale_by_terms = True
  config.optim.depth_ref = depth_ref  # Depth 4 > 3: every layer at 3/4 of its lr.
  config.optim.lr = 0.08
  config.model.init = "fan_in"
  config.model.init_variance = 0.1
  task = CompressTask(config)
  model = task.build_model(nnx.Rngs(0))
  before = [np.asarray(a) for a, _ in model.params_list()]
  tx = optim.build(config.optim, 10, None, task.lr_multiplier(model))
  optimizer = nnx.Optimizer(model, tx, wrt=nnx.Param)
  make_train_step(task)(model, optimizer, task.batch(0))
  # Adam's first step moves each coefficient by lr * g / |g| = lr (where g != 0).
  for (m, _), old, (new, _) in zip(fourier.layer_dims(4, 4, 3), before, model.params_list()):
    step = np.abs(np.asarray(new) - old)
    assert np.median(step) == pytest.approx(factor * 0.08 / 2**m, rel=1e-2)


def test_fan_in_init_variances():
  config = get_config("thesis")
  config.model.init = "fan_in"
  config.model.init_variance = 0.5
  assert init_variances(config.model, 3) == [0.5 / 4] + [0.5 / 256] * 5
  config.model.init = "constant"
  assert init_variances(config.model, 3) == [0.5] * 6


@pytest.mark.parametrize("schedule,expect", [
    ("constant", [1.0, 1.0, 1.0]),
    ("linear", [1.0, 0.55, 0.1]),     # 1.0 -> end_lr 0.1 over 10 steps
    ("cosine", [1.0, 0.55, 0.1]),
])
def test_schedules(schedule, expect):
  cfg = get_config("thesis").optim
  cfg.lr, cfg.end_lr, cfg.schedule = 1.0, 0.1, schedule
  fn = optim.schedule(cfg, 10)
  np.testing.assert_allclose([fn(0), fn(5), fn(10)], expect, atol=1e-6)


def test_warmup_then_decay():
  cfg = get_config("thesis").optim
  cfg.lr, cfg.end_lr, cfg.schedule, cfg.warmup_steps = 1.0, 0.0, "cosine", 4
  fn = optim.schedule(cfg, 14)
  np.testing.assert_allclose([fn(0), fn(2), fn(4), fn(9), fn(14)], [0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


def test_optimizer_groups_get_their_own_lr():
  cfg = get_config("thesis").optim
  cfg.lr = 1.0
  with cfg.unlocked():
    cfg.groups = {"latent": {"lr": 1e-3}}
  params = {"decoder": np.ones(3, np.float32), "latent": np.ones(3, np.float32)}
  tx = optim.build(cfg, 10, labels={"decoder": "default", "latent": "latent"})
  updates, _ = tx.update({k: np.ones(3, np.float32) for k in params}, tx.init(params), params)
  assert np.allclose(np.abs(updates["decoder"]), 1.0, rtol=1e-3)
  assert np.allclose(np.abs(updates["latent"]), 1e-3, rtol=1e-3)


@pytest.mark.parametrize("clip, eps", [(0.0, None), (1.0, None), (0.0, 1e-2), (1.0, 1e-2)])
def test_update_clip_bounds_the_rms_of_adams_direction(clip, eps):
  """Against Adam by hand: equal without the clip; after a gradient spike (which meets a
  stale second moment) the clipped step is the same direction with RMS `clip`. optim.eps
  (absent: optax's 1e-8) is Adam's epsilon; 1e-2 is the size of these gradients."""
  cfg = get_config("thesis").optim
  # b1 0.5 takes in the spike at once; b2 0.99 over 300 steps leaves v's bias correction near 1.
  cfg.lr, cfg.b1, cfg.b2, cfg.update_clip = 0.5, 0.5, 0.99, clip
  if eps is None:
    del cfg["eps"]
  else:
    cfg.eps = eps
  rng = np.random.default_rng(0)
  grads = [rng.normal(0, 0.01, 64).astype(np.float32) for _ in range(300)]
  grads.append(grads[-1] * np.where(np.arange(64) < 32, 100.0, 1.0).astype(np.float32))
  tx = optim.build(cfg, 100)
  state, params = tx.init(np.zeros(64, np.float32)), np.zeros(64, np.float32)
  m = v = np.zeros(64)
  for t, g in enumerate(grads, 1):
    updates, state = tx.update(g, state, params)
    m, v = 0.5 * m + 0.5 * g, 0.99 * v + 0.01 * g.astype(np.float64) ** 2
    direction = (m / (1 - 0.5**t)) / (np.sqrt(v / (1 - 0.99**t)) + (eps or 1e-8))
    rms = np.sqrt(np.mean(direction**2))
    expect = -0.5 * direction * (min(1.0, clip / rms) if clip else 1.0)
    np.testing.assert_allclose(np.asarray(updates), expect, rtol=1e-4, atol=1e-7)
  assert rms > 1.5  # the spike's step would have overshot: the check has teeth


def test_wandb_mode_never_prompts(monkeypatch, tmp_path):
  monkeypatch.delenv("WANDB_MODE", raising=False)
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
  monkeypatch.setenv("NETRC", str(tmp_path / "none"))
  assert logs.wandb_mode("auto") == "offline"
  assert logs.wandb_mode("disabled") == "disabled"
  monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
  assert logs.wandb_mode("auto") == "online"
  monkeypatch.setenv("WANDB_MODE", "disabled")
  assert logs.wandb_mode("online") == "disabled"


def test_a_run_saved_before_a_setting_existed_resumes_under_its_old_value(tmp_path):
  import json

  from dfm_flax.errors import UserError
  from dfm_flax.loop.train import check_resumable
  from experiments import meta
  config = meta.get_config("smoke")
  saved = json.loads(config.to_json_best_effort())
  del saved["meta"]["scale"]  # As a meta run saved before meta.scale was added.
  (tmp_path / "config.json").write_text(json.dumps(saved))
  check_resumable(config, str(tmp_path))  # scale 1 is what that run did: it resumes.
  config.meta.scale = 8
  with pytest.raises(UserError, match=r"meta.scale: 1 -> 8"):
    check_resumable(config, str(tmp_path))
  # The same for a compress run saved before model.first_init_variance was a setting.
  config = get_config("best")
  saved = json.loads(config.to_json_best_effort())
  del saved["model"]["first_init_variance"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  check_resumable(config, str(tmp_path))
  config.model.first_init_variance = 1.0
  with pytest.raises(UserError, match=r"model.first_init_variance: 0.0 -> 1.0"):
    check_resumable(config, str(tmp_path))


def test_an_older_runs_config_reads_as_a_current_one_in_one_place(tmp_path):
  import json

  from dfm_flax.loop import restore
  from experiments import compress, meta
  saved = json.loads(meta.get_config("lm").to_json_best_effort())
  for key in ("scale", "source", "inner_optimizer", "lm_search", "lm_refit", "lm_damping"):
    del saved["meta"][key]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  back = restore.saved_config(str(tmp_path)).meta
  # What those runs did: full-resolution photographs, gradient inner steps, plain LM steps.
  assert (back.scale, back.source, back.inner_optimizer) == (1, "photos", "sgd")
  assert (back.lm_search, back.lm_refit, back.lm_damping) == (False, 0, 0.1)
  assert json.loads((tmp_path / "config.json").read_text()) == saved  # the file is kept as is
  plain = json.loads(compress.get_config("best").to_json_best_effort())
  assert "meta" not in restore.upgrade(plain)  # a compress run gains no meta section
  # Nor does another task gain a compress setting: a VAE run resumes as saved.
  from experiments import vae_mnist
  vae = vae_mnist.get_config("smoke")
  (tmp_path / "config.json").write_text(vae.to_json_best_effort())
  assert "first_init_variance" not in restore.saved_config(str(tmp_path)).model
  train.check_resumable(vae, str(tmp_path))
