"""SIREN (Sitzmann et al. 2020), the implicit representation COIN uses: the baseline that
DFM competes with at equal bytes. Sine layers sin(w0 * (W x + b)), first-layer weights
U(-1/in, 1/in), later ones U(-sqrt(6/in)/w0, sqrt(6/in)/w0), linear output layer.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx


def num_params(hidden: int, layers: int, channels: int) -> int:
  """Weights of a SIREN with `layers` sine layers of width `hidden` (2 inputs)."""
  return (2 * hidden + hidden) + (layers - 1) * (hidden * hidden + hidden) + hidden * channels + channels


class Siren(nnx.Module):
  def __init__(self, hidden: int, layers: int, channels: int, *, w0: float = 30.0, rngs: nnx.Rngs):
    def uniform(bound):
      return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)
    sizes = [2] + [hidden] * layers
    self.layers = nnx.List([
        nnx.Linear(i, o, kernel_init=uniform(1 / i if k == 0 else math.sqrt(6 / i) / w0),
                   bias_init=uniform(1 / math.sqrt(i)), rngs=rngs)
        for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:]))])
    self.out = nnx.Linear(hidden, channels, kernel_init=uniform(math.sqrt(6 / hidden) / w0), rngs=rngs)
    self.w0 = w0

  def __call__(self, coords: jax.Array) -> jax.Array:
    x = coords * 2 - 1  # SIREN's convention: positions in [-1, 1]
    for layer in self.layers:
      x = jnp.sin(self.w0 * layer(x))
    return self.out(x)
