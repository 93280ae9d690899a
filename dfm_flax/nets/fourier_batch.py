"""Many Fourier Nets at once, one per image: the generative decoder's renderer.

The same maths as `fourier.net_apply` (thesis eq. 4.5, layers composed, tanh output),
laid out for a batch of small nets that each render a whole image:

  * pixels on the last axis: every array is (images, features, pixels), so elementwise
    work runs along long contiguous rows (vmapping `net_apply` gave (pixels, 2^m) rows
    of 4-16 numbers and per-image matrix products of 16 x 4);
  * cos and sin of 2 pi x come from one polynomial (`sincos_turns`) instead of the
    library's cos and sin, which cost ~10x more on a CPU than the rest of the layer;
  * for small layers (2^m x n <= UNROLL_LIMIT) the features and the contraction are
    written out term by term, so XLA fuses a whole layer into one pass over the pixels;
    larger layers stack the features and contract them with one batched matrix product;
  * a hand-written backward pass (`jax.custom_vjp`): d/dx of a_k cos(2 pi k.x) +
    b_k sin(2 pi k.x) is 2 pi k (b_k cos - a_k sin), so the features, recomputed once
    (cheaper than keeping them from the forward pass), serve the input gradient and the
    weight gradients alike; the latter are one matrix product.

python -m benchmarks.generation_speed measures it against the image-by-image form.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from dfm_flax.nets import fourier

# Layers with at most this many (term, output) pairs are written out term by term
# (one fused pass); larger ones stack their features for a matrix product.
UNROLL_LIMIT = 256

# Taylor coefficients of sin and cos on [-pi/2, pi/2], through t^13 and t^12: the
# truncation error at pi/2 is below 1e-8, under float32's rounding of the result.
_SIN = [(-1) ** i / math.factorial(2 * i + 1) for i in range(7)]
_COS = [(-1) ** i / math.factorial(2 * i) for i in range(7)]


def _horner(coefficients, t2):
  out = coefficients[-1]
  for c in reversed(coefficients[:-1]):
    out = out * t2 + c
  return out


def _half_angle(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """t = pi r for r = x - round(x) in [-1/2, 1/2] turns (exact in float32), and sin t."""
  t = jnp.pi * (x - jnp.round(x))
  return t, t * _horner(_SIN, t * t)


def sincos_turns(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """cos(2 pi x) and sin(2 pi x) within ~1e-7 of the library's, in a few multiply-adds.

  The half angle t lies in [-pi/2, pi/2], where short Taylor series are accurate; the
  double-angle formulas give the full angle."""
  t, s = _half_angle(x)
  return 1 - 2 * s * s, 2 * s * _horner(_COS, t * t)


def _cos_turns(x: jax.Array) -> jax.Array:
  """The cosine of `sincos_turns` alone (same formula: both paths give the same features)."""
  _, s = _half_angle(x)
  return 1 - 2 * s * s


def _frequencies_twice(m: int) -> np.ndarray:
  """(2 * 2^m, m): the rows of `fourier.frequencies` for the cos terms, then the sin terms."""
  return np.concatenate([fourier.frequencies(m)] * 2)


def _terms(x: jax.Array) -> tuple[list, list]:
  """cos and sin of 2 pi k.x for k in {0,1}^m (row order of `fourier.frequencies`) as
  lists of (images, pixels) arrays, built by doubling from the m cos/sin of x: the term
  with k_j = 1 is the term without it times e^{2 pi i x_j}. Entry 0 (cos 1, sin 0) is None."""
  c, s = sincos_turns(x)
  re, im = [None], [None]
  for j in range(x.shape[1]):
    cj, sj = c[:, j], s[:, j]
    re_j = [cj if r is None else r * cj - i * sj for r, i in zip(re, im)]
    im_j = [sj if r is None else r * sj + i * cj for r, i in zip(re, im)]
    re, im = re + re_j, im + im_j
  return re, im


def _stacked(x: jax.Array) -> jax.Array:
  """(images, 2 * 2^m, pixels): the cos terms then the sin terms, as one array for matrix
  products. Phases k.x are sums of subsets of x (exact float32 adds, no dot); the sines
  are cosines a quarter turn earlier, so one fused pass computes both."""
  m = x.shape[1]
  k = _frequencies_twice(m)
  quarter = np.repeat(np.float32([0.0, 0.25]), 2**m)[None, :, None]
  phase = sum(jnp.asarray(k[:, j])[None, :, None] * x[:, None, j, :] for j in range(m))
  return _cos_turns(phase - quarter)


def _small(a: jax.Array) -> bool:
  return a.shape[1] * a.shape[2] <= UNROLL_LIMIT


def _forward(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """x (images, m, pixels), a and b (images, 2^m, n) -> (images, n, pixels)."""
  if _small(a):
    re, im = _terms(x)
    rows = []
    for o in range(a.shape[2]):
      acc = a[:, 0, o, None]
      for t in range(1, len(re)):
        acc = acc + a[:, t, o, None] * re[t] + b[:, t, o, None] * im[t]
      rows.append(acc)
    y = jnp.stack(rows, 1)
  else:
    y = jnp.einsum("bkp,bkn->bnp", _stacked(x), jnp.concatenate([a, b], 1),
                   precision=fourier.HIGHEST)
  return y + x if x.shape[1] == a.shape[2] else y


@jax.custom_vjp
def layer(x: jax.Array, a: jax.Array, b: jax.Array) -> jax.Array:
  """One Fourier layer for every image: x (images, m, pixels) -> (images, n, pixels)."""
  return _forward(x, a, b)


def _layer_fwd(x, a, b):
  # The barrier keeps XLA from fusing this output into the next layer and recomputing
  # it there once per use (a training step took ~40% longer without it).
  return jax.lax.optimization_barrier(_forward(x, a, b)), (x, a, b)


def _layer_bwd(saved, g):
  x, a, b = saved
  m, n = x.shape[1], a.shape[2]
  # Makes the features below wait for g: otherwise XLA computes every layer's features
  # at the start of the backward pass, all held at once, and the step ran 2.5x slower.
  x = x + 0.0 * g[:, :1, :1]
  features = _stacked(x)
  gab = jnp.einsum("bkp,bnp->bkn", features, g, precision=fourier.HIGHEST)
  # d/dx_j of a_k cos(2 pi k.x) + b_k sin(2 pi k.x) = 2 pi k_j (b_k cos - a_k sin).
  if _small(a):
    cos, sin = features[:, :2**m], features[:, 2**m:]
    per_term = [None] + [
        sum(g[:, o] * (b[:, t, o, None] * cos[:, t] - a[:, t, o, None] * sin[:, t])
            for o in range(n)) for t in range(1, 2**m)]
    gx = jnp.stack([sum(per_term[t] for t in range(2**m) if (t >> j) & 1) for j in range(m)], 1)
  else:
    weights = jnp.einsum("bkn,bnp->bkp", jnp.concatenate([b, -a], 1), g,
                         precision=fourier.HIGHEST)
    k = _frequencies_twice(m)
    # k batched like the images: a dot over the image axis writes no transposed copy.
    k = jnp.broadcast_to(jnp.asarray(k), (x.shape[0],) + k.shape)
    gx = jnp.einsum("bkj,bkp->bjp", k, weights * features, precision=fourier.HIGHEST)
  gx = 2 * jnp.pi * gx
  if m == n:
    gx = gx + g
  return gx, gab[:, :2**m], gab[:, 2**m:]


layer.defvjp(_layer_fwd, _layer_bwd)


def render(weights: jax.Array, coords: jax.Array, width: int, depth: int,
           channels: int) -> jax.Array:
  """(images, P) flat weights (`fourier.flatten` layout), (pixels, 2) coords ->
  (images, pixels, channels) in [-1, 1]: `fourier.render` for every image at once."""
  params = jax.vmap(lambda w: fourier.unflatten(w, width, depth, channels))(weights)
  x = jnp.broadcast_to(coords.T[None], (weights.shape[0],) + coords.T.shape)
  for a, b in params:
    x = layer(x, a, b)
  return jnp.tanh(jnp.moveaxis(x, 1, -1))
