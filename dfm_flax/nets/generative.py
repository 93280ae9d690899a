"""Generative DFM (thesis 4.2.2): a decoder MLP maps a latent z to ALL weights of a
Fourier Net, which renders the image. model.method "auto" renders all images of a batch
at once (`fourier_batch.render`, the fast form); "product" or "direct" vmap the
compression net's `fourier.render` over the images (the same values, ~10x slower on a
CPU; kept as the reference the fast form is measured against).

  AutoDecoder:    z is a learned table, one row per training image (MNIST setting).
  EncoderDecoder: z = MLP encoder(image) (CIFAR-10 setting).
Both expose encode(batch) -> z and images(z, coords) -> (B, H*W, C) in [-1, 1].
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from dfm_flax.nets import fourier, fourier_batch

ACTIVATIONS = {"relu": nnx.relu, "gelu": nnx.gelu, "tanh": jnp.tanh, "elu": nnx.elu,
               "leaky_relu": nnx.leaky_relu}


class MLP(nnx.Module):
  """Dense layers with weights N(0, init_variance) and zero biases (thesis 5.1.3)."""

  def __init__(self, sizes: Sequence[int], *, init_variance: float, activation: str = "relu",
               rngs: nnx.Rngs):
    init = nnx.initializers.normal(stddev=math.sqrt(init_variance))
    self.layers = nnx.List([
        nnx.Linear(i, o, kernel_init=init, bias_init=nnx.initializers.zeros_init(), rngs=rngs)
        for i, o in zip(sizes[:-1], sizes[1:])])
    self.activation = activation

  def __call__(self, x: jax.Array) -> jax.Array:
    act = ACTIVATIONS[self.activation]
    for layer in self.layers[:-1]:
      x = act(layer(x))
    return self.layers[-1](x)


class FourierDecoder(nnx.Module):
  """z -> flat Fourier Net weights (size = the net's true eq. 4.5 count) -> pixels."""

  def __init__(self, latent_dim: int, hidden: Sequence[int], width: int, depth: int,
               channels: int, *, init_variance: float, activation: str, method: str,
               rngs: nnx.Rngs):
    self.width, self.depth, self.channels, self.method = width, depth, channels, method
    self.num_weights = fourier.num_params(width, depth, channels)
    self.mlp = MLP([latent_dim, *hidden, self.num_weights], init_variance=init_variance,
                   activation=activation, rngs=rngs)

  def __call__(self, z: jax.Array) -> jax.Array:
    return self.mlp(z)

  def render(self, weights: jax.Array, coords: jax.Array) -> jax.Array:
    """(B, P) weights, (N, 2) coords -> (B, N, C) pixels in [-1, 1]."""
    if self.method == "auto":
      return fourier_batch.render(weights, coords, self.width, self.depth, self.channels)
    one = lambda w: fourier.render(w, coords, self.width, self.depth, self.channels, self.method)
    return jax.vmap(one)(weights)


class AutoDecoder(nnx.Module):
  """A learned latent per training image (no encoder)."""

  def __init__(self, num_images: int, latent_dim: int, decoder: FourierDecoder, *,
               latent_variance: float, rngs: nnx.Rngs):
    self.latents = nnx.Param(math.sqrt(latent_variance) *
                             jax.random.normal(rngs.params(), (num_images, latent_dim)))
    self.decoder = decoder

  def encode(self, batch) -> jax.Array:
    return self.latents[...][batch["index"]]

  def images(self, z: jax.Array, coords: jax.Array) -> jax.Array:
    return self.decoder.render(self.decoder(z), coords)


class EncoderDecoder(nnx.Module):
  """An MLP encoder from the flattened image to z."""

  def __init__(self, encoder: MLP, decoder: FourierDecoder):
    self.encoder = encoder
    self.decoder = decoder

  def encode(self, batch) -> jax.Array:
    images = batch["image"]
    return self.encoder(images.reshape(images.shape[0], -1) * 2 - 1)

  def images(self, z: jax.Array, coords: jax.Array) -> jax.Array:
    return self.decoder.render(self.decoder(z), coords)
