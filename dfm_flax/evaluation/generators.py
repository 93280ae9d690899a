"""Evaluation of generators: latent priors, sample grids, reconstructions, Frechet distance.

The Frechet distance between two feature sets is
    ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2});
the trace of the matrix square root is computed from the eigenvalues of
S1^{1/2} S2 S1^{1/2} (symmetric, so `eigh` is stable), not with scipy's sqrtm.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dfm_flax import files
from dfm_flax.data import images
from dfm_flax.errors import UserError
from dfm_flax.evaluation import features, figures
from dfm_flax.evaluation.batched import compiled, in_batches
from dfm_flax.loop import logs

PRIORS = ("gaussian", "gmm")


def frechet_distance(feats1: np.ndarray, feats2: np.ndarray) -> float:
  f1, f2 = np.asarray(feats1, np.float64), np.asarray(feats2, np.float64)
  mu1, mu2 = f1.mean(0), f2.mean(0)
  s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
  w, v = np.linalg.eigh(s1)
  root1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
  middle = np.linalg.eigvalsh(root1 @ s2 @ root1)
  tr_sqrt = np.sum(np.sqrt(np.clip(middle, 0, None)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt)


# --- priors on z ---------------------------------------------------------------------
def fit_priors(latents: np.ndarray, gmm_components: int, seed: int,
               gaussian_scale: float | None = None) -> dict[str, np.ndarray]:
  """Gaussian N(0, s^2 I) and a full-covariance GMM fitted to the latents.

  s is `gaussian_scale` when given (the VAE's own prior: 1), else the RMS of the
  latents: the DFM's eq. 4.8 penalty shrinks z to a scale set by lambda, and
  N(0, I) would sample far outside the region the decoder was trained on.
  """
  from sklearn.mixture import GaussianMixture  # slow to import: at evaluation only
  latents = np.asarray(latents, np.float64)
  k = max(1, min(gmm_components, len(latents) // 2))
  gmm = GaussianMixture(k, covariance_type="full", random_state=seed, reg_covar=1e-6)
  gmm.fit(latents)
  scale = np.sqrt(np.mean(latents**2)) if gaussian_scale is None else gaussian_scale
  return {"gaussian_scale": np.array(scale),
          "gmm_weights": gmm.weights_, "gmm_means": gmm.means_,
          "gmm_covariances": gmm.covariances_}


def sample_latents(priors: dict, prior: str, num: int, dim: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  if prior == "gaussian":
    return (float(priors["gaussian_scale"]) * rng.standard_normal((num, dim))).astype(np.float32)
  if prior == "gmm":
    comp = rng.choice(len(priors["gmm_weights"]), size=num, p=priors["gmm_weights"])
    chol = np.linalg.cholesky(priors["gmm_covariances"])
    eps = rng.standard_normal((num, dim))
    z = priors["gmm_means"][comp] + np.einsum("nij,nj->ni", chol[comp], eps)
    return z.astype(np.float32)
  raise UserError(f"unknown prior {prior!r}; use one of {', '.join(PRIORS)}")


def save_priors(priors: dict, workdir: str) -> None:
  with files.atomic_path(os.path.join(workdir, "priors.npz"), ".tmp") as tmp:
    np.savez(tmp, **priors)


def load_priors(workdir: str) -> dict:
  path = os.path.join(workdir, "priors.npz")
  if not os.path.exists(path):
    raise UserError(f"no priors.npz in {workdir}: the run has not finished its evaluation")
  with np.load(path) as f:
    return dict(f)


RENDER_BATCH = 128  # Latents per call of the jitted renderer (one compilation).


def render_latents(model, z: np.ndarray, coords, image_shape) -> np.ndarray:
  """Images in [0, 1], shape (N, H, W, C), from latents (batched, jitted once)."""
  flat = in_batches(compiled(model, "images", coords), np.asarray(z, np.float32), RENDER_BATCH)
  return ((flat + 1) / 2).reshape((len(z), *image_shape)).clip(0, 1)


def warm_up_generator(model, coords, image_shape, latent_dim: int) -> None:
  """What evaluate_generator needs before it can start, done ahead: import scikit-learn's
  GMM (~1.5 s on 2 cores) and compile the renderer its grids and samples call (~1 s, by
  rendering one batch of zero latents through render_latents itself). The train loop runs
  a task's warm_up in a thread while training runs, on a copy of the model placed as
  evaluation will place it (same structure, shapes and device: the same compilation)."""
  import sklearn.mixture  # noqa: F401
  render_latents(model, np.zeros((RENDER_BATCH, latent_dim), np.float32), coords, image_shape)


def generator_coords(config, image_shape):
  """The pixel grid a generator run renders on, from its config (the VAE's has no
  coord_range: it renders on the plain grid): for training, evaluation and sampling."""
  coord_range = tuple(config.model.get("coord_range", (0.0, 1.0)))
  return jnp.asarray(images.pixel_grid(image_shape[0], image_shape[1], coord_range))


def training_latents(model, dataset_images: np.ndarray) -> np.ndarray:
  if hasattr(model, "latents"):
    return np.asarray(model.latents[...])[:len(dataset_images)]
  fn = jax.jit(lambda x: model.encode({"image": x}))
  return in_batches(fn, dataset_images.astype(np.float32), 512)


def per_image_psnr(originals: np.ndarray, recon: np.ndarray) -> np.ndarray:
  o = images.to_uint8(originals).astype(np.float64) / 255
  r = images.to_uint8(recon).astype(np.float64) / 255
  mse = np.mean((o - r) ** 2, axis=(1, 2, 3))
  return -10 * np.log10(np.maximum(mse, 1e-12))


def evaluate_generator(model, dataset, coords, config, workdir: str,
                       gaussian_scale: float | None = None, held_out=None) -> dict:
  """Reconstructions, priors, sample/reconstruction/interpolation grids, FIDs (against
  `held_out` images when given: see score_samples)."""
  ev = config.eval
  shape = dataset.images.shape[1:]
  latents = training_latents(model, dataset.images)
  priors = fit_priors(latents, ev.gmm_components, config.seed, gaussian_scale)
  save_priors(priors, workdir)

  n_rec = min(ev.recon_images, len(dataset))
  recon = render_latents(model, latents[:n_rec], coords, shape)
  psnrs = per_image_psnr(dataset.images[:n_rec], recon)
  # Originals kept beside the checkpoint so that sampling needs no dataset.
  np.savez_compressed(os.path.join(workdir, "originals.npz"),
                      images=images.to_uint8(dataset.images[:64]), index=np.arange(min(64, len(dataset))))
  metrics = {
      "num_images": len(dataset), "data": dataset.description,
      "num_held_out": len(held_out) if held_out else 0,
      "recon_psnr_mean": float(np.mean(psnrs)), "recon_psnr_median": float(np.median(psnrs)),
      "recon_mse": float(np.mean((dataset.images[:n_rec] - recon) ** 2)),
      "recon_images": n_rec, "gaussian_prior_scale": float(priors["gaussian_scale"]),
      "num_params": count_params(model),
  }
  write_grids(model, priors, dataset.images[:64], latents[:64], recon[:32], coords, shape, workdir,
              config.seed)
  metrics.update(score_samples(
      lambda prior, n: render_latents(model, sample_latents(priors, prior, n, latents.shape[1],
                                                            config.seed), coords, shape),
      PRIORS, dataset, config, workdir, held_out))
  figures.training_curves(logs.read_history(workdir), ["loss", "rec_mse", "psnr", "z_sq"],
                          os.path.join(workdir, "training.png"), log_keys=("loss", "rec_mse"))
  return metrics


def count_params(model) -> dict:
  """Learnable parameters per top-level part (decoder, encoder, latents, ...) and in total."""
  state = nnx.state(model, nnx.Param)
  out = {str(name): int(sum(x.size for x in jax.tree.leaves(part))) for name, part in state.items()}
  if hasattr(model, "decoder") and hasattr(model.decoder, "num_weights"):
    out["fourier_net"] = int(model.decoder.num_weights)
  out["total"] = int(sum(x.size for x in jax.tree.leaves(state)))
  return out


def write_grids(model, priors, originals, latents, recon, coords, shape, workdir, seed) -> None:
  """The end-of-run figures; experiments.sample writes the same three from a checkpoint."""
  write_reconstructions(originals, recon, os.path.join(workdir, "reconstructions.png"))
  for prior in PRIORS:
    write_samples(model, priors, prior, 64, seed, coords, shape,
                  os.path.join(workdir, f"samples_{prior}.png"))
  write_interpolations(model, latents, coords, shape, 10, os.path.join(workdir, "interpolations.png"))


def write_reconstructions(originals, recon, path: str) -> None:
  """recon: the reconstructions of originals[:len(recon)], already rendered."""
  figures.image_grid(figures.interleave(originals[:len(recon)], recon), path, cols=16,
                     title="originals (odd columns) and reconstructions (even columns)")


def write_samples(model, priors, prior: str, num: int, seed: int, coords, shape, path: str) -> None:
  z = sample_latents(priors, prior, num, priors["gmm_means"].shape[1], seed)
  figures.image_grid(render_latents(model, z, coords, shape), path, cols=int(np.ceil(np.sqrt(num))),
                     title=f"{num} samples, {prior} prior")


def write_interpolations(model, latents, coords, shape, steps: int, path: str) -> None:
  figures.image_grid(interpolations(model, latents, coords, shape, steps, 8), path, cols=steps,
                     title="interpolations between training latents")


def interpolations(model, latents, coords, shape, steps: int, rows: int) -> np.ndarray:
  """rows x steps images walking linearly from latent 2r to latent 2r+1."""
  rows = min(rows, len(latents) // 2)
  t = np.linspace(0, 1, steps)[None, :, None]
  z = (1 - t) * latents[0:2 * rows:2, None] + t * latents[1:2 * rows:2, None]
  return render_latents(model, z.reshape(-1, latents.shape[1]), coords, shape)


def score_samples(sampler, priors, dataset, config, workdir, held_out=None) -> dict:
  """Frechet distances of samples (per prior and feature extractor).

  `fid` is against the held-out images when there are some (images no generator trained
  on), else against the training images; `fid_train` is always against the training
  images (what a search may tune on without touching the held-out set); `fid_data` scores
  the training images themselves against the held-out ones: the floor a generator that
  reproduced its training set would reach. Every set has the same n images.
  """
  extractors = features.available(config.eval)
  if not extractors:
    return {"fid": None, "fid_note": "no feature extractor configured (eval.classifier_dir "
                                     "or eval.inception_weights)"}
  n = min(config.eval.fid_samples, len(dataset), len(held_out) if held_out else len(dataset))
  train_feats = {name: fx(dataset.images[:n]) for name, fx in extractors.items()}
  fake_feats = {}
  for prior in priors:
    fake = sampler(prior, n)
    fake_feats.update({f"{name}/{prior}": fx(fake) for name, fx in extractors.items()})

  def against(reference):
    return {key: frechet_distance(reference[key.split("/")[0]], f) for key, f in fake_feats.items()}
  out = {"fid_samples": n, "fid_train": against(train_feats)}
  if held_out is None:
    return {**out, "fid": dict(out["fid_train"]),
            "fid_reference": f"first {n} of {dataset.description}"}
  test_feats = {name: fx(held_out.images[:n]) for name, fx in extractors.items()}
  return {**out, "fid": against(test_feats), "fid_reference": f"first {n} of {held_out.description}",
          "fid_data": {name: frechet_distance(train_feats[name], test_feats[name])
                       for name in extractors}}
