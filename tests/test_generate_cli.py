"""Generation end to end as a user runs it: classifier, DFM, VAE, sampling, bad input."""
import json
import os
import shutil

import pytest

from tests.helpers import error_line, run_cli

pytestmark = pytest.mark.slow  # Whole-run end-to-end tests (python -m pytest -m 'not slow' skips them).


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp("gen")
  out = {name: str(root / name) for name in ("classifier", "dfm", "vae")}
  proc = run_cli("experiments.run", "--config", "experiments/classifier_mnist.py:smoke",
                 "--workdir", out["classifier"])
  assert proc.returncode == 0, proc.stderr
  for name, cfg in (("dfm", "mnist"), ("vae", "vae_mnist")):
    # The generators hold out the classifier's test digits and are scored against them.
    proc = run_cli("experiments.run", "--config", f"experiments/{cfg}.py:smoke", "--workdir",
                   out[name], f"--config.eval.classifier_dir={out['classifier']}",
                   "--config.data.test_fraction=0.2")
    assert proc.returncode == 0, proc.stderr
  return out


def metrics(workdir):
  with open(os.path.join(workdir, "metrics.json")) as f:
    return json.load(f)


def test_classifier_reports_held_out_accuracy(runs):
  m = metrics(runs["classifier"])
  assert m["num_test"] == 200 and m["num_train"] == 800
  assert m["test_accuracy"] > 0.6  # 120 steps on 800 digits; chance is 0.1


@pytest.mark.parametrize("name", ["dfm", "vae"])
def test_generators_are_scored_the_same_way(runs, name):
  m = metrics(runs[name])
  assert set(m["fid"]) == set(m["fid_train"]) == {"classifier/gaussian", "classifier/gmm"}
  assert all(v > 0 for v in m["fid"].values())  # Equality with a recomputation: below.
  assert m["fid_samples"] == 200 and "mnist_1k" in m["fid_reference"]
  assert "held-out" in m["fid_reference"] and (m["num_images"], m["num_held_out"]) == (800, 200)
  # Real digits against real digits: far below any sample set of a 150-step run.
  assert 0 < m["fid_data"]["classifier"] < 0.5 * min(m["fid"].values())
  assert {"recon_psnr_mean", "recon_mse", "num_params"} <= set(m)
  for png in ("samples_gaussian.png", "samples_gmm.png", "reconstructions.png", "interpolations.png"):
    assert os.path.getsize(os.path.join(runs[name], png)) > 1000


def test_reported_fid_is_recomputed_independently(runs):
  """The DFM's FIDs against a recomputation outside the evaluation code: the same prior
  samples (seeded) rendered from the checkpoint, the classifier's features, the held-out
  bundled digits (the last fifth of the fixed permutation) as reference, and the Frechet
  distance by scipy's sqrtm."""
  import jax.numpy as jnp
  import numpy as np
  import scipy.linalg

  from dfm_flax.data import datasets, images
  from dfm_flax.evaluation import features, generators
  from dfm_flax.loop.restore import load_model
  m = metrics(runs["dfm"])
  config, meta, model = load_model(runs["dfm"])
  coords = jnp.asarray(images.pixel_grid(28, 28, tuple(config.model.coord_range)))
  priors = generators.load_priors(runs["dfm"])
  extract = features.classifier_features(runs["classifier"])
  with np.load(datasets.BUNDLED_MNIST) as f:
    order = np.random.default_rng(0).permutation(1000)
    reference = f["images"][order[-200:], ..., None].astype(np.float32) / 255

  def fid(a, b):
    mu1, mu2, s1, s2 = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real))

  ref = extract(reference).astype(np.float64)
  for prior in ("gaussian", "gmm"):
    z = generators.sample_latents(priors, prior, 200, priors["gmm_means"].shape[1], config.seed)
    fake = extract(generators.render_latents(model, z, coords, (28, 28, 1))).astype(np.float64)
    assert m["fid"][f"classifier/{prior}"] == pytest.approx(fid(ref, fake), rel=1e-3)
  assert fid(ref, ref) < 1e-3 * m["fid"]["classifier/gmm"]


def test_dfm_parameter_counts(runs):
  p = metrics(runs["dfm"])["num_params"]
  assert p["fourier_net"] == 576
  assert p["latents"] == 800 * 55  # one per training digit: the held-out ones have none
  assert p["decoder"] == (55 * 170 + 170) + (170 * 220 + 220) + (220 * 576 + 576)


@pytest.mark.parametrize("name", ["dfm", "vae"])
def test_sample_from_checkpoint(runs, name, tmp_path):
  out = str(tmp_path / "s.png")
  proc = run_cli("experiments.sample", "--workdir", runs[name], "--out", out, "--num", "9",
                 "--prior", "gaussian", "--interpolate", "5")
  assert proc.returncode == 0, proc.stderr
  for path in (out, str(tmp_path / "s_reconstructions.png"), str(tmp_path / "s_interpolations.png")):
    assert os.path.getsize(path) > 1000


def test_side_by_side_samples_figure(runs, tmp_path):
  out = str(tmp_path / "both.png")
  proc = run_cli("studies.generators", "--runs", f"{runs['dfm']},{runs['vae']}",
                 "--labels", "DFM,VAE", "--out", out, "--num", "16")
  assert proc.returncode == 0, proc.stderr
  from PIL import Image
  width, height = Image.open(out).size
  assert width > 1.5 * height  # two panels side by side
  line = error_line(run_cli("studies.generators", "--runs", runs["classifier"], "--labels", "C",
                            "--out", str(tmp_path / "c.png")))
  assert "not a generator" in line and not os.path.exists(tmp_path / "c.png")


def test_sample_bad_input(runs, tmp_path):
  empty = tmp_path / "empty"
  empty.mkdir()
  assert "config.json" in error_line(run_cli("experiments.sample", "--workdir", str(empty), "--out", "x.png"))
  # A checkpoint whose config no longer matches: latent size edited after training.
  edited = tmp_path / "edited"
  shutil.copytree(runs["dfm"], edited)
  cfg = json.loads((edited / "config.json").read_text())
  cfg["model"]["latent_dim"] = 7
  (edited / "config.json").write_text(json.dumps(cfg))
  line = error_line(run_cli("experiments.sample", "--workdir", str(edited), "--out", str(tmp_path / "y.png")))
  assert "does not match" in line
  no_ckpt = tmp_path / "no_ckpt"
  shutil.copytree(runs["dfm"], no_ckpt)
  shutil.rmtree(no_ckpt / "checkpoints")
  assert "no checkpoint" in error_line(
      run_cli("experiments.sample", "--workdir", str(no_ckpt), "--out", str(tmp_path / "z.png")))
  assert "sampling needs a generator" in error_line(
      run_cli("experiments.sample", "--workdir", runs["classifier"], "--out", str(tmp_path / "w.png")))


def test_cifar10_pipeline_smoke(tmp_path):
  wd = str(tmp_path / "cifar")
  proc = run_cli("experiments.run", "--config", "experiments/cifar10.py:smoke", "--workdir", wd)
  assert proc.returncode == 0, proc.stderr
  m = metrics(wd)
  assert m["num_params"]["encoder"] == (3072 * 128 + 128) + (128 * 64 + 64) + (64 * 110 + 110)
  assert m["num_params"]["fourier_net"] == 2 * 4 * 6 + 2 * 2 * 64 * 6 + 2 * 64 * 3
  assert m["fid"] is None and "no feature extractor" in m["fid_note"]


def test_class_filter_leaving_nothing_is_one_line(tmp_path):
  line = error_line(run_cli("experiments.run", "--config", "experiments/mnist.py:smoke",
                            "--workdir", str(tmp_path / "w"), "--config.data.classes=42"))
  assert "leaves no images" in line


def test_sparse_latents_save_dense_adams_table_and_resume_exactly(tmp_path):
  """optim.sparse_latents end to end: the saved latent table is the dense-Adam run's (the
  loop brings every row up to date before the last save), and a run stopped and resumed
  ends where an uninterrupted one does."""
  import numpy as np

  from dfm_flax.loop.restore import load_model
  args = ["--config", "experiments/mnist.py:smoke", "--config.train.steps=30",
          "--config.optim.groups.latent.lr=0.01", "--config.optim.lr=0.003",
          "--config.model.init_variance=0.002", "--config.train.checkpoint_every=10"]
  tables = {}
  for name, extra in (("dense", []), ("rows", ["--config.optim.sparse_latents=True"]),
                      ("split", ["--config.optim.sparse_latents=True", "--config.train.stop_at=20"])):
    wd = str(tmp_path / name)
    proc = run_cli("experiments.run", *args, *extra, "--workdir", wd)
    assert proc.returncode == 0, proc.stderr
    if name == "split":
      proc = run_cli("experiments.run", *args, "--config.optim.sparse_latents=True", "--workdir", wd)
      assert proc.returncode == 0 and "resumed from checkpoint at step 20" in proc.stderr, proc.stderr
    tables[name] = np.asarray(load_model(wd)[2].latents[...])
  np.testing.assert_allclose(tables["rows"], tables["dense"], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(tables["split"], tables["rows"], rtol=1e-6, atol=1e-8)
