"""Meta-learning task: the outer gradients against independent computations, and a run."""
import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from PIL import Image

from dfm_flax.codec import fileformat
from dfm_flax.data import datasets, images
from dfm_flax.errors import UserError
from dfm_flax.loop import restore
from dfm_flax.nets import fourier, levenberg
from dfm_flax.tasks import meta_learning, starts
from experiments import meta as meta_config
from tests.helpers import error_line, run_cli


def _task(init_variance=0.05, **changes):
  c = meta_config.get_config("smoke")
  for k, v in changes.items():
    c.meta[k] = v
  c.model.init_variance = init_variance  # large enough that adaptation changes every weight
  return meta_learning.Task(c), c


def _grads(task, model, batch):
  return nnx.grad(lambda m: task.loss(m, batch)[0])(model)


def test_reptile_gradient_is_theta_minus_mean_adapted():
  task, c = _task(algorithm="reptile")
  model = task.build_model(nnx.Rngs(0))
  batch = task.batch(3)
  theta = model.params_list()
  # Independent: adapt each crop by hand with plain per-layer gradient descent.
  mse = lambda p, t: jnp.mean((fourier.net_apply(p, task.coords, c.model.method) - t) ** 2)
  phis = []
  for t in batch["target"]:
    p = theta
    for _ in range(c.meta.inner_steps):
      g = jax.grad(mse)(p, t)
      p = [(a - lr * ga, b - lr * gb) for (a, b), (ga, gb), lr in zip(p, g, task.lrs)]
    phis.append(p)
  grads = _grads(task, model, batch)
  for i, layer in enumerate(model.layers):
    expect_a = np.asarray(theta[i][0]) - np.mean([np.asarray(p[i][0]) for p in phis], axis=0)
    np.testing.assert_allclose(np.asarray(grads.layers[i].a[...]), expect_a, rtol=1e-4, atol=1e-7)
    assert np.abs(expect_a).max() > 1e-4  # adaptation moved the layer: the check has teeth


def test_guard_judges_the_start_on_the_same_probe_crops_every_time():
  """The meta task's guard reads the adapted MSE of the pool's first PROBE_CROPS crops (not
  the batch's Reptile loss, which swings more than the guard's ratio between batches), with
  no flat reference (the crops' mean colours are what a few inner steps barely beat)."""
  task, c = _task(pool=32)
  model = task.build_model(nnx.Rngs(0))
  mse = lambda p, t: jnp.mean((fourier.net_apply(p, task.coords, c.model.method) - t) ** 2)
  probe = np.asarray(task.pool[:task.PROBE_CROPS])
  after = []
  for t in probe:  # Independent: each crop adapted by hand.
    p = model.params_list()
    for _ in range(c.meta.inner_steps):
      g = jax.grad(mse)(p, t)
      p = [(a - lr * ga, b - lr * gb) for (a, b), (ga, gb), lr in zip(p, g, task.lrs)]
    after.append(float(mse(p, t)))
  judged = [task.guarded_loss(float(task.loss(model, task.batch(s))[0]), {}, model)
            for s in (0, 7)]
  assert judged[0] == judged[1]  # whatever the batch
  np.testing.assert_allclose(judged[0], np.mean(after), rtol=1e-4)
  assert task.reference_loss() is None


def test_maml_gradient_goes_through_the_inner_steps():
  """Second-order MAML's gradient against central finite differences of the post-adaptation
  loss; first-order MAML differs from it."""
  # A smooth regime (small steps, small weights), where finite differences are meaningful.
  task, c = _task(0.01, algorithm="maml", inner_steps=2, inner_lr=0.1)
  model = task.build_model(nnx.Rngs(1))
  batch = task.batch(0)
  g2 = np.asarray(_grads(task, model, batch).layers[0].a[...])
  a = model.layers[0].a
  base = np.asarray(a[...], np.float64)
  eps = 3e-3
  for idx in [(0, 0), (1, 1), (3, 2)]:
    vals = []
    for sign in (1, -1):
      w = base.copy()
      w[idx] += sign * eps
      a[...] = jnp.asarray(w, jnp.float32)
      vals.append(float(task.loss(model, batch)[0]))
    a[...] = jnp.asarray(base, jnp.float32)
    fd = (vals[0] - vals[1]) / (2 * eps)
    assert g2[idx] == pytest.approx(fd, rel=0.02, abs=1e-4)
  task1, _ = _task(0.01, algorithm="maml", inner_steps=2, inner_lr=0.1, first_order=True)
  g1 = np.asarray(_grads(task1, model, batch).layers[0].a[...])
  assert not np.allclose(g1, g2, rtol=1e-3)


def test_held_out_photographs_must_not_be_trained_on():
  c = meta_config.get_config("smoke")
  c.meta.held_out = "astronaut"
  with pytest.raises(UserError, match="share"):
    meta_learning.Task(c)
  # The same pixels under another name: coffee is coffee_full's centre, cat is chelsea.
  c.meta.held_out, c.meta.photos = "coffee", "astronaut,coffee_full"
  with pytest.raises(UserError, match=r"share \['coffee'\]"):
    meta_learning.Task(c)
  c.meta.held_out, c.meta.photos = "cat", "chelsea"
  with pytest.raises(UserError, match="share"):
    meta_learning.Task(c)
  c.meta.held_out, c.meta.photos = "chelsea", "astronaut,kitten"
  with pytest.raises(UserError, match=r"unknown photograph\(s\) \['kitten'\]"):
    meta_learning.Task(c)


def _folder(tmp_path, sizes):
  """Images of one flat grey level each (image i: level 40 * (i + 1)), of the given sizes,
  named so that sorted order is creation order."""
  folder = tmp_path / "photos"
  folder.mkdir()
  for i, (h, w) in enumerate(sizes):
    Image.fromarray(np.full((h, w, 3), 40 * (i + 1), np.uint8)).save(folder / f"im{i}.png")
  return str(folder)


def test_meta_from_a_folder_of_mixed_sizes_never_trains_on_its_held_out_images(tmp_path):
  c = meta_config.get_config("smoke")
  c.meta.source, c.meta.held_out_last = "data", 2
  c.data.source, c.data.dir = "folder", _folder(tmp_path, [(20, 30), (40, 17), (16, 16),
                                                           (33, 25), (18, 50)])
  task = meta_learning.Task(c)
  level = lambda crops: set(np.round((np.asarray(crops) + 1) * 127.5).astype(int).ravel())  # noqa: E731
  assert level(task.pool) == {40, 80, 120}  # every training image drawn, no held-out one
  assert level(task.held_out) == {160, 200}
  assert task.pool.shape == (c.meta.pool, 16 * 16, 3) and task.channels == 3
  c.meta.held_out_last = 5
  with pytest.raises(UserError, match="held_out_last=5 must be between 1 and 4"):
    meta_learning.Task(c)


def test_meta_on_mnist_digits_learns_a_grey_net_and_holds_out_the_last_digits():
  c = meta_config.get_config("mnist")
  c.meta.pool, c.meta.eval_crops = 64, 16
  task = meta_learning.Task(c)
  digits = datasets.load(c.data).images.reshape(1000, 28 * 28, 1) * 2 - 1
  held = np.asarray(task.held_out)
  # Crops of a digit's own size are the digits: each held-out crop is one of the last 100.
  dist = lambda a, b: np.abs(a[:, None] - b[None]).max(axis=(2, 3))  # noqa: E731
  assert np.all(dist(held, digits[-100:]).min(axis=1) < 1e-6)
  assert np.all(dist(held, digits[:-100]).min(axis=1) > 1e-3)
  assert np.all(dist(np.asarray(task.pool), digits[:-100]).min(axis=1) < 1e-6)
  model = task.build_model(nnx.Rngs(0))
  assert model(task.coords).shape == (28 * 28, 1)
  loss, aux = task.loss(model, task.batch(0))
  assert np.isfinite(float(loss)) and float(aux["mse_after"]) < float(aux["mse_before"])


@pytest.fixture(scope="module")
def learned(tmp_path_factory):
  """A smoke meta run (gradient inner steps) and an LM meta run going on from it."""
  tmp_path = tmp_path_factory.mktemp("meta")
  wd = str(tmp_path / "meta")
  proc = run_cli("experiments.run", "--config", "experiments/meta.py:smoke", "--workdir", wd)
  assert proc.returncode == 0, proc.stderr
  with open(os.path.join(wd, "metrics.json")) as f:
    m = json.load(f)
  assert {"psnr_learned_2_steps", "psnr_random_2_steps", "psnr_learned_0_steps"} <= set(m)
  # Levenberg-Marquardt inner steps, going on from that start (meta.py:lm's recipe): they
  # fit the held-out crops from it, and barely move a random start's tiny weights.
  lm_wd = str(tmp_path / "meta_lm")
  proc = run_cli("experiments.run", "--config", "experiments/meta.py:smoke", "--workdir", lm_wd,
                 "--config.meta.inner_optimizer=lm", f"--config.init_from={wd}",
                 "--config.train.stop_at=5")
  assert proc.returncode == 0, proc.stderr
  with open(os.path.join(lm_wd, "metrics.json")) as f:
    lm = json.load(f)
  assert lm["psnr_learned_2_steps"] > lm["psnr_random_2_steps"] + 3
  assert lm["psnr_random_2_steps"] == pytest.approx(lm["psnr_random_0_steps"], abs=0.5)
  return wd, lm_wd


@pytest.mark.slow
def test_a_fit_from_a_learned_start_says_what_the_start_may_not_suit(learned, tmp_path):
  wd, lm_wd = learned
  fit = str(tmp_path / "fit")
  proc = run_cli("experiments.run", "--config", "experiments/compress.py:smoke", "--workdir", fit,
                 f"--config.init_from={wd}", "--config.model.width=3", "--config.model.depth=3",
                 "--config.train.steps=1")
  assert proc.returncode == 0, proc.stderr
  assert "initialised from the weights in" in proc.stdout + proc.stderr
  # The smoke start was learned on 16x16 crops, the smoke image is not: one line says so.
  assert f"note: {wd} was learned on 16x16 crops; on this" in proc.stdout + proc.stderr
  assert "learned for Levenberg-Marquardt steps" not in proc.stdout + proc.stderr
  # A gradient fit from the start learned for LM steps says that too.
  proc = run_cli("experiments.run", "--config", "experiments/compress.py:smoke", "--workdir",
                 fit + "_lm", f"--config.init_from={lm_wd}", "--config.model.width=3",
                 "--config.model.depth=3", "--config.train.steps=1")
  assert proc.returncode == 0, proc.stderr
  assert f"note: {lm_wd} was learned for Levenberg-Marquardt steps" in proc.stdout + proc.stderr
  # An LM meta run going on from it fits it with LM steps: no such line.
  proc = run_cli("experiments.run", "--config", "experiments/meta.py:smoke", "--workdir",
                 lm_wd + "_on", "--config.meta.inner_optimizer=lm", f"--config.init_from={lm_wd}",
                 "--config.train.stop_at=2")
  assert proc.returncode == 0, proc.stderr
  assert "initialised from the weights in" in proc.stdout + proc.stderr
  assert "learned for Levenberg-Marquardt steps" not in proc.stdout + proc.stderr


@pytest.mark.slow
def test_the_codec_stores_the_difference_from_a_learned_start(learned, tmp_path):
  wd, _ = learned
  fit = str(tmp_path / "fit")
  proc = run_cli("experiments.run", "--config", "experiments/compress.py:smoke", "--workdir", fit,
                 "--config.model.width=3", "--config.model.depth=3", "--config.train.steps=1")
  assert proc.returncode == 0, proc.stderr
  # The codec from the learned start: the file stores the difference and names the start.
  img, out = str(tmp_path / "img.png"), str(tmp_path / "img.dfm")
  Image.fromarray(datasets.photo_crops(["astronaut"], 1, 24, 0)[0][0]).save(img)
  proc = run_cli("experiments.codec", "encode", img, "--out", out, "--init", wd, "--bits", "8",
                 "--qat_steps", "0", "--config", "experiments/compress.py:smoke",
                 "--config.train.steps=5")
  assert proc.returncode == 0, proc.stderr
  assert f"difference from {wd}" in proc.stdout
  # The smoke start was learned on 16x16 crops: a 24x24 image gets the one-line note.
  assert f"note: {wd} was learned on 16x16 crops; on this 24x24 image" in proc.stdout + proc.stderr
  assert starts.size_note(wd, [(16, 16, 3)]) == ""
  raw = open(out, "rb").read()
  assert raw[4] == fileformat.VERSION_WITH_START
  _, start = restore.load_start(wd)
  header, params = fileformat.decode(raw, start)
  assert header["start"] == fileformat.start_digest(start, 3).hex()
  png = str(tmp_path / "back.png")
  proc = run_cli("experiments.codec", "decode", out, "--out", png, "--init", wd)
  assert proc.returncode == 0 and os.path.exists(png), proc.stderr
  assert "--init" in error_line(run_cli("experiments.codec", "decode", out, "--out", png))
  # Another net of the same size (the fit's) is not the start the file names.
  assert "not the start this file was coded from" in error_line(
      run_cli("experiments.codec", "decode", out, "--out", png, "--init", fit))
  # The quantisation-aware fine-tune of a difference-coded file rounds the difference from
  # the start: the net it ends with is exactly what the file decodes to.
  tuned = str(tmp_path / "tuned.dfm")
  proc = run_cli("experiments.codec", "encode", img, "--out", tuned, "--from", out + ".run",
                 "--init", wd, "--bits", "6", "--qat_steps", "10")
  assert proc.returncode == 0, proc.stderr
  qat_config, _, qat = restore.load_model(tuned + ".qat6")
  assert qat_config.model.quant_start == os.path.abspath(wd)
  _, back = fileformat.decode(open(tuned, "rb").read(), start)
  for (qa, qb), (da, db) in zip(qat.net_params(), back):
    np.testing.assert_allclose(qa, da, rtol=0, atol=1e-6)
    np.testing.assert_allclose(qb, db, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_the_codec_encodes_a_small_image_in_lm_steps_from_a_learned_start(learned, tmp_path):
  wd, _ = learned
  _, start = restore.load_start(wd)
  # Encoding in seconds: LM steps from the start, no training run; the file stores the
  # difference from the start and decodes to the PSNR it reports, well above the start's.
  small, lm_out = str(tmp_path / "small.png"), str(tmp_path / "small.dfm")
  Image.fromarray(datasets.photo_crops(["astronaut"], 1, 16, 1)[0][0]).save(small)
  proc = run_cli("experiments.codec", "encode", small, "--out", lm_out, "--init", wd,
                 "--lm_steps", "3")
  assert proc.returncode == 0, proc.stderr
  assert "3 LM steps" in proc.stdout and not os.path.exists(lm_out + ".run")
  reported = float(re.search(r"PSNR ([\d.]+) dB", proc.stdout).group(1))
  header, back = fileformat.decode(open(lm_out, "rb").read(), start)
  pixels = images.to_uint8(images.load_image(small)) / 255
  decoded = images.render_params(back, 16, 16, header["coord_range"], header["method"])
  assert images.psnr(pixels, images.to_uint8(decoded) / 255) == pytest.approx(reported, abs=0.01)
  at_start = images.render_params(start, 16, 16, header["coord_range"], header["method"])
  assert reported > images.psnr(pixels, images.to_uint8(at_start) / 255) + 1
  # It kept the better of two 8-bit files: of the fits with and without the last-layer
  # refit (levenberg.fit called here, coded by codec.encode).
  coords = jnp.asarray(images.pixel_grid(16, 16, header["coord_range"]))
  candidates = []
  for refit in (levenberg.REFIT, 0):
    p, _, _ = levenberg.fit(start, coords, jnp.asarray(pixels.reshape(-1, 3) * 2 - 1, jnp.float32),
                            3, header["method"], 0.1, 1.0, search=True, refit=refit)
    raw = fileformat.encode([(np.asarray(a), np.asarray(b)) for a, b in p], (16, 16, 3), 3, 3,
                       header["coord_range"], header["method"], 8, "ans", start)
    one = images.render_params(fileformat.decode(raw, start)[1], 16, 16, header["coord_range"],
                               header["method"])
    candidates.append(images.psnr(pixels, images.to_uint8(one) / 255))
  assert reported == pytest.approx(max(candidates), abs=0.01)
  other = float(re.search(r"other's file [\d,]+ bytes at ([\d.]+) dB", proc.stdout).group(1))
  assert other == pytest.approx(min(candidates), abs=0.01)
  if candidates[0] != candidates[1]:
    assert ("with the last-layer" in proc.stdout) == (candidates[0] > candidates[1])
  assert "give --init" in error_line(run_cli("experiments.codec", "encode", small, "--out",
                                             lm_out + "2", "--lm_steps", "3"))
  assert "drop --bpp" in error_line(run_cli("experiments.codec", "encode", small, "--out",
                                            lm_out + "2", "--init", wd, "--lm_steps", "3",
                                            "--bpp", "1"))
  tiny = str(tmp_path / "tiny.png")
  Image.fromarray(datasets.photo_crops(["astronaut"], 1, 4, 1)[0][0]).save(tiny)
  assert "too small for this net" in error_line(run_cli(
      "experiments.codec", "encode", tiny, "--out", lm_out + "2", "--init", wd, "--lm_steps", "3"))
  assert not os.path.exists(lm_out + "2")


@pytest.mark.slow
def test_meta_start_study_fits_codes_and_refuses_trained_photographs(learned, tmp_path):
  wd, _ = learned
  # What the start buys (studies.meta_start), with the recipe's own fits too.
  bench = str(tmp_path / "bench")
  proc = run_cli("studies.meta_start", "--start", wd, "--out", bench, "--crops", "2",
                 "--adam_lrs", "0.1", "--recipe_steps", "40", "--lm_search", "--lm_refit")
  assert proc.returncode == 0, proc.stderr
  with open(os.path.join(bench, "meta_start.json")) as f:
    r = json.load(f)
  assert set(r["psnr"]) == {f"{o}/{s}" for o in ("sgd", "adam", "recipe", "lm", "lm_search",
                                                  "lm_refit")
                            for s in ("learned", "random")}
  # Levenberg-Marquardt at the run's damping, up to 100 steps, never worse as it goes on;
  # --lm_search adds the search's fits beside the plain ones, --lm_refit the refitting ones.
  assert r["lm"] == {"damping": 0.1, "down": 1.5, "search": True, "refit": levenberg.REFIT}
  for opt in ("lm", "lm_search", "lm_refit"):
    lm = r["psnr"][f"{opt}/learned"]
    assert sorted(int(k) for k in lm) == [0, 1, 3, 10, 30, 100]
    assert lm["0"] <= lm["1"] <= lm["3"] <= lm["10"] <= lm["30"] <= lm["100"]
    assert lm["100"] > lm["0"] + 1
  assert {"lm_search/10", "lm_search/100", "lm_refit/10"} <= set(r["coding"])
  assert sorted(int(k) for k in r["psnr"]["recipe/random"]) == [0, 1, 3, 10, 40]
  # Every curve of one start begins at that start's PSNR, and the recipe's fit improves it.
  for start in ("learned", "random"):
    assert r["psnr"][f"sgd/{start}"]["0"] == r["psnr"][f"recipe/{start}"]["0"]
    assert r["psnr"][f"recipe/{start}"]["40"] > r["psnr"][f"recipe/{start}"]["0"] + 1
  assert "recipe/40" in r["coding"] and r["coding"]["recipe/40"]["crops"] >= 1
  # The equal-PSNR comparison of the two 4-12-bit curves (undefined for a crop whose curves
  # share no PSNR range: the smoke nets' files are tiny, and which optimizers' curves meet
  # moves with the start) is a fraction of the bytes, and defined for most optimizers.
  defined = [c for c in r["coding"].values() if c["crops_bd"] >= 1]
  assert len(defined) >= len(r["coding"]) / 2, json.dumps(r["coding"])
  assert all(-1 < c["saved_bd"] < 1 for c in defined), json.dumps(r["coding"])
  assert "BD-rate" in open(os.path.join(bench, "meta_start.md")).read()
  # Other held-out photographs, never one the start was trained on (coffee is coffee_full's).
  assert "were in this run's training photographs" in error_line(run_cli(
      "studies.meta_start", "--start", wd, "--out", bench, "--held_out", "china,coffee"))


@pytest.mark.slow
def test_ten_steps_study_pairs_each_crops_lm_fit_with_its_bar(learned, tmp_path):
  wd, _ = learned
  # Ten steps against the bar, crop by crop: each crop's learned-start PSNR is that of
  # levenberg.fit's refitting search steps on it, and the summary is of those pairs.
  ten = str(tmp_path / "ten")
  proc = run_cli("studies.ten_steps", "--start", wd, "--out", ten, "--crops", "3",
                 "--seed", "5", "--steps", "2", "--adam_steps", "20", "--adam_lrs", "0.1,0.2")
  assert proc.returncode == 0, proc.stderr
  assert "learned start ahead on" in proc.stdout
  with open(os.path.join(ten, "ten_steps.json")) as f:
    r = json.load(f)
  cfg = restore.saved_config(wd)
  targets = jnp.asarray(meta_learning.meta_crops(cfg, 3, 5, held_out=True))
  coords = jnp.asarray(images.pixel_grid(16, 16, tuple(cfg.model.coord_range)))
  _, learned = restore.load_start(wd)
  for t, got in zip(targets, r["per_crop"]["learned"]):
    p, _, _ = levenberg.fit(learned, coords, t, 2, cfg.model.method, 0.1, 1.5, search=True,
                            refit=levenberg.REFIT)
    assert float(meta_learning.psnr(meta_learning.mse(p, coords, t, cfg.model.method))) == pytest.approx(got, abs=0.02)
  assert r["adam_lr"] in (0.1, 0.2) and len(r["per_crop"]["bar"]) == 3
  assert r["difference"] == pytest.approx(
      np.mean(np.subtract(r["per_crop"]["learned"], r["per_crop"]["bar"])), abs=1e-9)
  assert os.path.exists(os.path.join(ten, "ten_steps.png"))
  assert "--crops must be at least 2" in error_line(run_cli(
      "studies.ten_steps", "--start", wd, "--out", ten, "--crops", "1"))


  # The bar with the codec recipe's schedule: said in the summary and the report.
  proc = run_cli("studies.ten_steps", "--start", wd, "--out", ten + "_recipe", "--crops", "2",
                 "--steps", "1", "--adam_steps", "20", "--adam_lrs", "0.1",
                 "--adam_schedule", "recipe")
  assert proc.returncode == 0, proc.stderr
  assert "recipe schedule" in proc.stdout
  with open(os.path.join(ten + "_recipe", "ten_steps.json")) as f:
    assert json.load(f)["adam_schedule"] == "recipe"


def test_ten_steps_paired_summary_agrees_with_scipy():
  """studies.ten_steps' standard error is the paired t-test's (mean / t), and a crop
  whose bar fit diverged is left out of every figure."""
  from scipy import stats

  from studies.ten_steps import compare
  rng = np.random.default_rng(0)
  bar = rng.normal(33, 2, 40)
  learned = bar + rng.normal(0.3, 1.0, 40)
  r = compare(np.append(learned, 30.0), np.append(bar, np.nan))
  t = stats.ttest_rel(learned, bar).statistic
  assert r["crops"] == 40 and r["left_out"] == 1
  assert r["difference"] == pytest.approx(np.mean(learned - bar))
  assert r["standard_error"] == pytest.approx(r["difference"] / t)
  assert r["interval_95"][0] < r["difference"] < r["interval_95"][1]
  assert r["ahead"] == int(np.sum(learned > bar))
  assert r["learned"] == pytest.approx(np.mean(learned)) and r["bar"] == pytest.approx(np.mean(bar))


def test_meta_start_recipe_is_compress_best_scaled_per_layer():
  """studies.meta_start fits with :best's optimiser at a peak of 1 and scales each layer
  by its lr: the same updates as :best's own optimiser, to float rounding."""
  from dfm_flax.loop import optim
  from experiments.compress import get_config
  from studies.crop_fits import recipe
  steps = 3000
  tx, peak = recipe(steps)
  ref = optim.single(get_config("best").optim, steps)
  grads = 0.01 * (jnp.arange(steps)[:, None] % 7 - 3.0) * jnp.ones((1, 3))

  def updates(t):
    def step(state, g):
      u, state = t.update(g, state)
      return state, u
    return jax.lax.scan(step, t.init(grads[0]), grads)[1]
  np.testing.assert_allclose(np.asarray(updates(tx)) * peak, np.asarray(updates(ref)),
                             rtol=1e-5, atol=1e-12)
  assert peak == get_config("best").optim.lr


def test_a_start_at_a_coarser_scale_trains_on_pooled_windows_and_says_so(tmp_path):
  c = meta_config.get_config("smoke")
  c.meta.scale = 4
  crops = meta_learning.meta_crops(c, 6, 5, held_out=True)
  names = c.meta.held_out.split(",")
  pooled = datasets.photo_crops(names, 6, c.meta.crop, 5, 4, pool=True)[0] / 255.0
  np.testing.assert_allclose(crops, pooled.reshape(6, -1, 3) * 2 - 1, atol=1e-6)
  assert not np.allclose(crops, meta_learning.meta_crops(meta_config.get_config("smoke"), 6, 5, True))
  (tmp_path / "config.json").write_text(c.to_json_best_effort())
  note = starts.size_note(str(tmp_path), [(300, 451, 3)])
  assert note.startswith(f"note: {tmp_path} was learned on 16x16 crops of 64-pixel windows; "
                         "on this 451x300 image")
  assert starts.size_note(str(tmp_path), [(16, 16, 3)]) == ""


@pytest.mark.parametrize("variant, says", [("lm_search", True), ("small", False), ("lm", True)])
def test_a_start_learned_for_lm_steps_is_said_before_a_gradient_fit(tmp_path, variant, says):
  # A start learned by gradient inner steps gets no such line.
  (tmp_path / "config.json").write_text(meta_config.get_config(variant).to_json_best_effort())
  note = starts.lm_note(str(tmp_path))
  assert (note != "") == says
  if says:
    assert note.startswith(f"note: {tmp_path} was learned for Levenberg-Marquardt steps")
    assert "--lm_steps" in note
