"""Generation (thesis 4.2.2): decoder z -> Fourier Net weights, trained on a dataset.

Loss (eq. 4.8): mean pixel squared error + lambda * mean_i ||z_i||^2.
After training, evaluation measures reconstructions, fits the priors on the
training latents (an isotropic Gaussian and a GMM), samples from each and
scores the samples with a Frechet distance (dfm_flax/evaluation/generators.py).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dfm_flax.data import datasets
from dfm_flax.evaluation import generators
from dfm_flax.nets import fourier, generative
from dfm_flax.tasks import TaskBase


def latent_group(path) -> str:
  """Optimizer group of a parameter: 'latent' for the latent table or the encoder."""
  names = {str(getattr(k, "key", getattr(k, "name", ""))) for k in path}
  return "latent" if names & {"latents", "encoder"} else "default"


def model_from_info(config, info: dict, rngs: nnx.Rngs):
  """The generative model described by config.model and the data's shape."""
  m = config.model
  h, w, c = info["image_shape"]
  num_images = info["num_images"]
  decoder = generative.FourierDecoder(
      m.latent_dim, list(m.decoder_hidden), m.width, m.depth, c, init_variance=m.init_variance,
      activation=m.activation, method=m.method, rngs=rngs)
  if m.encoder_hidden:
    encoder = generative.MLP([h * w * c, *m.encoder_hidden, m.latent_dim],
                             init_variance=m.init_variance, activation=m.activation, rngs=rngs)
    return generative.EncoderDecoder(encoder, decoder)
  return generative.AutoDecoder(num_images, m.latent_dim, decoder,
                                latent_variance=m.latent_init_variance, rngs=rngs)


class Task(TaskBase):
  def __init__(self, config):
    self.config = config
    self.dataset, self.held_out = datasets.load_split(config.data)
    self.image_shape = self.dataset.images.shape[1:]
    h, w, c = self.image_shape
    self.coords = generators.generator_coords(config, self.image_shape)
    self.batches = datasets.ImageBatches(self.dataset, config.train.batch_size, config.seed)
    kept = f", {len(self.held_out)} held out" if self.held_out else ""
    print(f"data: {self.dataset.description}: {len(self.dataset)} images of {w}x{h}x{c}{kept}; "
          f"Fourier Net {config.model.width}x{config.model.depth} has "
          f"{fourier.num_params(config.model.width, config.model.depth, c)} weights")

  def checkpoint_info(self) -> dict:
    return {"num_images": len(self.dataset), "image_shape": list(self.image_shape)}

  def build_model(self, rngs: nnx.Rngs):
    return model_from_info(self.config, self.checkpoint_info(), rngs)

  def param_labels(self, model):
    return lambda params: jax.tree_util.tree_map_with_path(lambda p, _: latent_group(p), params)

  def batch(self, step: int, rows=None):
    return self.batches(step, rows)

  def loss(self, model, batch):
    # batch["latents"]: the table's rows, gathered by the step (sparse_rows.py).
    z = batch["latents"] if "latents" in batch else model.encode(batch)
    pred = model.images(z, self.coords)
    target = batch["image"].reshape(pred.shape) * 2 - 1
    rec = jnp.mean((pred - target) ** 2)
    reg = jnp.mean(jnp.sum(z**2, axis=-1))
    return rec + self.config.model.lam * reg, {
        "rec_mse": rec, "psnr": -10 * jnp.log10(rec / 4), "z_sq": reg}

  def warm_up(self, model) -> None:
    generators.warm_up_generator(model, self.coords, self.image_shape,
                                 self.config.model.latent_dim)

  def evaluate(self, model, workdir: str) -> dict:
    return generators.evaluate_generator(model, self.dataset, self.coords, self.config, workdir,
                                         held_out=self.held_out)
