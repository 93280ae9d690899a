"""Baseline: an MLP VAE (Bernoulli pixels) trained by the shared loop and scored by the
same evaluation as the DFM generator (same priors code, same Frechet distance).

It exposes the generator interface (encode(batch) -> z, images(z, coords)), so
`evaluation.evaluate_generator` treats both models alike; its Gaussian prior is
the VAE's own N(0, I), and its GMM is fitted on the posterior means.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from dfm_flax.data import datasets
from dfm_flax.evaluation import generators
from dfm_flax.nets import generative
from dfm_flax.tasks import TaskBase


class VAE(nnx.Module):
  def __init__(self, image_shape, hidden, latent_dim: int, activation: str, rngs: nnx.Rngs):
    h, w, self.channels = image_shape
    pixels = h * w * self.channels
    init_var = 1.0 / max(hidden[0], 1)  # Scaled init: the VAE is a standard baseline.
    self.encoder = generative.MLP([pixels, *hidden, 2 * latent_dim], init_variance=init_var,
                                  activation=activation, rngs=rngs)
    self.decoder_mlp = generative.MLP([latent_dim, *reversed(hidden), pixels],
                                      init_variance=init_var, activation=activation, rngs=rngs)
    self.latent_dim = latent_dim

  def posterior(self, image: jax.Array):
    out = self.encoder(image.reshape(image.shape[0], -1) * 2 - 1)
    return out[:, :self.latent_dim], out[:, self.latent_dim:]

  def encode(self, batch) -> jax.Array:
    return self.posterior(batch["image"])[0]

  def logits(self, z: jax.Array) -> jax.Array:
    return self.decoder_mlp(z)

  def images(self, z: jax.Array, coords=None) -> jax.Array:
    """(B, H*W, C) in [-1, 1] like the DFM decoder; coords are unused (fixed grid)."""
    probs = jax.nn.sigmoid(self.logits(z))
    return (2 * probs - 1).reshape(z.shape[0], -1, self.channels)


def model_from_info(config, info: dict, rngs: nnx.Rngs) -> VAE:
  return VAE(tuple(info["image_shape"]), list(config.model.hidden), config.model.latent_dim,
             config.model.activation, rngs)


class Task(TaskBase):
  def __init__(self, config):
    self.config = config
    self.dataset, self.held_out = datasets.load_split(config.data)
    self.image_shape = self.dataset.images.shape[1:]
    self.coords = generators.generator_coords(config, self.image_shape)  # Where evaluation renders.
    self.batches = datasets.ImageBatches(self.dataset, config.train.batch_size, config.seed)
    self.key = jax.random.key(config.seed + 3)

  def checkpoint_info(self) -> dict:
    return {"num_images": len(self.dataset), "image_shape": list(self.image_shape)}

  def build_model(self, rngs: nnx.Rngs) -> VAE:
    return model_from_info(self.config, self.checkpoint_info(), rngs)


  def batch(self, step: int, rows=None):
    # One key for the whole batch: the noise is drawn for the global batch in the loss.
    return {**self.batches(step, rows), "key": jax.random.fold_in(self.key, step)}

  @staticmethod
  def loss(model, batch):
    x = batch["image"].reshape(batch["image"].shape[0], -1)
    mean, logvar = model.posterior(batch["image"])
    z = mean + jnp.exp(0.5 * logvar) * jax.random.normal(batch["key"], mean.shape)
    rec = optax.sigmoid_binary_cross_entropy(model.logits(z), x).sum(-1).mean()
    kl = 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1 - logvar, -1).mean()
    mse = jnp.mean((jax.nn.sigmoid(model.logits(mean)) - x) ** 2)
    return rec + kl, {"rec_nll": rec, "kl": kl, "psnr": -10 * jnp.log10(mse)}

  def warm_up(self, model) -> None:
    generators.warm_up_generator(model, self.coords, self.image_shape,
                                 self.config.model.latent_dim)

  def evaluate(self, model, workdir: str) -> dict:
    return generators.evaluate_generator(model, self.dataset, self.coords, self.config, workdir,
                                         gaussian_scale=1.0, held_out=self.held_out)
