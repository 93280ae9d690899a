"""Where a .dfm file spends its bits: a quantisation step per layer from how much each
layer's weights move the picture.

The codec's default grid gives every layer the same number of levels between its
weights' extremes (`codec.quantize`): the first layer, whose 2^2 terms set the phases of
everything after it, is rounded as coarsely, relative to its range, as the last. With
rounding noise of variance step^2 / 12 on a weight whose output sensitivity is s (the
sum over pixels and channels of (d pixel / d weight)^2), the picture's squared error
grows by s step^2 / 12; an entropy-coded weight costs about -log2(step) bits. Minimising
error plus lambda x bits over the steps of layers of n_l weights with total sensitivity
S_l gives step_l proportional to sqrt(n_l / S_l) = 1 / sqrt(mean sensitivity of layer l):
one scale for the whole net, which `encode_at_bytes` sets to hit a byte budget. The file
stores each layer's step as before, so every reader decodes it unchanged.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dfm_flax.codec import fileformat
from dfm_flax.nets import fourier


def weight_sensitivity(params, coords, method: str = "auto", probes: int = 8,
                       pixels: int = 2**14, seed: int = 0) -> list[np.ndarray]:
  """Per layer, for each weight of its stacked (a; b) (shape (2 x 2^m, n)), the sum over
  pixels and channels of (d output / d weight)^2 per pixel: the diagonal of J^T J,
  estimated (Hutchinson) as the mean of (d/dw sum r * output)^2 over `probes` draws of
  random signs r, on up to `pixels` pixel positions drawn from coords."""
  rng = np.random.default_rng(seed)
  coords = np.asarray(coords)
  if len(coords) > pixels:
    coords = coords[rng.choice(len(coords), size=pixels, replace=False)]
  xs = jnp.asarray(coords)
  params = [(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)) for a, b in params]
  channels = params[-1][0].shape[-1]

  @jax.jit
  def squared_grads(r):
    g = jax.grad(lambda p: jnp.sum(fourier.net_apply(p, xs, method) * r))(params)
    return [jnp.concatenate([ga**2, gb**2]) for ga, gb in g]

  total = [np.zeros((2 * np.shape(a)[0], np.shape(a)[1])) for a, _ in params]
  for _ in range(probes):
    r = rng.choice(np.float32([-1.0, 1.0]), size=(len(coords), channels))
    got = jax.device_get(squared_grads(jnp.asarray(r)))
    total = [t + np.asarray(x, np.float64) for t, x in zip(total, got)]
  # Per pixel of the sample: the same units whatever `pixels` is.
  return [t / probes / len(coords) for t in total]


def layer_sensitivity(params, coords, method: str = "auto", probes: int = 8,
                      pixels: int = 2**14, seed: int = 0) -> np.ndarray:
  """Per layer, the mean over its weights of `weight_sensitivity`."""
  return np.array([s.mean() for s in weight_sensitivity(params, coords, method, probes,
                                                        pixels, seed)])


def steps_for(sensitivity: np.ndarray, scale: float) -> list[float]:
  """Each layer's step: scale / sqrt(its mean sensitivity)."""
  return [float(scale / np.sqrt(max(s, 1e-30))) for s in sensitivity]


def encode_at_bytes(params, image_shape, net, sensitivity, target_bytes: float,
                    bits: int = 12, start=None, coder: str = "ans") -> tuple[bytes, list[float]]:
  """The file (and its steps) on the sensitivity grid whose size comes nearest
  `target_bytes` from below, if any does: a bisection on the scale, whose file shrinks
  as the scale grows. `bits` sets only the largest integer a layer may hold (steps are
  raised so nothing clips); net is the model config (width, depth, coord_range, method)."""
  def file(scale):
    steps = steps_for(sensitivity, scale)
    data = fileformat.encode(params, image_shape, net.width, net.depth, tuple(net.coord_range),
                        net.method, bits, coder, start, steps)
    return data, steps

  lo, hi = 1e-12, 1e3  # Scales: the finest grid (largest file) to one level per layer.
  for _ in range(60):
    mid = np.sqrt(lo * hi)
    if len(file(mid)[0]) > target_bytes:
      lo = mid
    else:
      hi = mid
    if hi / lo < 1.0001:
      break
  return file(hi)
