"""The Fourier layer of Deep Fourier Machines (thesis eq. 4.5) and the Fourier Net.

One layer maps R^m -> R^n:

    h(x) = sum_{k in {0,1}^m} a_k cos(2 pi k.x) + b_k sin(2 pi k.x)   (+ x when m == n)

The layer maths lives in `layer_apply` alone; the `FourierNet` module and the
functional renderer `render` (used by the generative decoder, vmapped over
images) both call it.

Two evaluation strategies compute the 2^m features cos/sin(2 pi k.x):
  * "direct":  k.x as a matmul with the {0,1}^m frequency matrix, then cos and sin
               (2 * 2^m transcendental evaluations per point);
  * "product": e^{2 pi i k.x} = prod_{j: k_j = 1} e^{2 pi i x_j}, so the terms
               follow from m complex exponentials by repeated doubling (m cos/sin
               evaluations per point). The layer splits x into a low and a high half:
               e^{2 pi i k.x} = L[k_low] * H[k_high], so
                   y = Re( sum_high H_high * sum_low L_low * (a - i b)[high, low] )
               contracts the low half with one real matmul and the high half with a
               small weighted sum; the 2^m features are never materialised, which is
               what makes it faster than "direct" (benchmarks/fourier_layer.py).
Row `idx` of the frequency matrix has k_j = bit j of idx; both strategies use
this order, so their weights are interchangeable.
"""
from __future__ import annotations

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dfm_flax.errors import UserError

METHODS = ("auto", "product", "direct")
# "auto" picks per layer: the factored product form wins from about 2^5 terms up; below
# that its extra small ops cost more than the 2^m cos/sin it saves
# (python -m benchmarks.fourier_layer).
AUTO_PRODUCT_FROM = 5
# 2^m features per point; past this the layer is certainly not what anyone meant.
MAX_LAYER_DIM = 24


def frequencies(m: int) -> np.ndarray:
  """All k in {0,1}^m as a (2^m, m) float32 matrix; row idx has k_j = bit j of idx."""
  idx = np.arange(2**m)[:, None]
  return ((idx >> np.arange(m)[None, :]) & 1).astype(np.float32)


# Precision. On GPUs JAX runs float32 matrix products in TF32 (10-bit mantissa) by
# default, and on TPUs in bfloat16: a phase 2 pi k.x computed that way is off by up to
# ~0.016 rad (TF32) or ~0.12 rad (bfloat16), a pixel's width in a 400-px image, and a
# .dfm file would decode to other pixels than on a CPU. So phases are never a matrix
# product (k.x is a sum of subsets of x, built by doubling: float32 adds, exact to
# rounding on every backend), and every contraction whose output feeds the next layer's
# phases asks for full float32 (HIGHEST). tests/test_fourier.py checks the lowered HLO.
HIGHEST = jax.lax.Precision.HIGHEST


def phases(x: jax.Array) -> jax.Array:
  """k.x for every k in {0,1}^m (row order of `frequencies`), without a dot product."""
  p = jnp.zeros(x.shape[:-1] + (1,), x.dtype)
  for j in range(x.shape[-1]):
    p = jnp.concatenate([p, p + x[..., j:j + 1]], -1)  # Terms with k_j = 1 add x_j.
  return p


def _features_direct(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  phase = 2 * jnp.pi * phases(x)
  return jnp.cos(phase), jnp.sin(phase)


def _features_product(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  theta = 2 * jnp.pi * x
  c, s = jnp.cos(theta), jnp.sin(theta)
  re = jnp.ones(x.shape[:-1] + (1,), x.dtype)
  im = jnp.zeros(x.shape[:-1] + (1,), x.dtype)
  for j in range(x.shape[-1]):
    cj, sj = c[..., j:j + 1], s[..., j:j + 1]
    # Terms with k_j = 1 are the terms so far times e^{2 pi i x_j}.
    re, im = (jnp.concatenate([re, re * cj - im * sj], -1),
              jnp.concatenate([im, re * sj + im * cj], -1))
  return re, im


def fourier_features(x: jax.Array, method: str = "auto") -> tuple[jax.Array, jax.Array]:
  """cos(2 pi k.x) and sin(2 pi k.x) for all k in {0,1}^m: two (..., 2^m) arrays."""
  if method in ("product", "auto"):
    return _features_product(x)
  if method == "direct":
    return _features_direct(x)
  raise UserError(f"unknown Fourier evaluation method {method!r}; use one of {METHODS}")


def _layer_product(x: jax.Array, a: jax.Array, b: jax.Array,
                   keep_features: bool = False) -> jax.Array:
  m, n = x.shape[-1], a.shape[-1]
  m_low = (m + 1) // 2
  m_high = m - m_low
  features = _features_product(x[..., :m_low]) + _features_product(x[..., m_low:])
  if keep_features:  # See render_apply.
    features = jax.lax.optimization_barrier(features)
  low_re, low_im, high_re, high_im = features

  def low_major(w):  # (2^m, n), row = low + high * 2^m_low  ->  (2^m_low, 2^m_high * n)
    return w.reshape(2**m_high, 2**m_low, n).transpose(1, 0, 2).reshape(2**m_low, -1)

  a_, b_ = low_major(a), low_major(b)
  # [L_re, L_im] @ [[a, -b], [b, a]] = [Re, Im] of sum_low L_low * (a - i b).
  mixed = jnp.matmul(jnp.concatenate([low_re, low_im], -1), jnp.block([[a_, -b_], [b_, a_]]),
                     precision=HIGHEST)
  mixed = mixed.reshape(x.shape[:-1] + (2, 2**m_high, n))
  return (jnp.einsum("...h,...hn->...n", high_re, mixed[..., 0, :, :], precision=HIGHEST)
          - jnp.einsum("...h,...hn->...n", high_im, mixed[..., 1, :, :], precision=HIGHEST))


def layer_apply(x: jax.Array, a: jax.Array, b: jax.Array, method: str = "auto",
                keep_features: bool = False) -> jax.Array:
  """One Fourier layer; a and b have shape (2^m, n). Adds x when m == n."""
  if method == "auto":
    method = "product" if x.shape[-1] >= AUTO_PRODUCT_FROM else "direct"
  if method == "product":
    y = _layer_product(x, a, b, keep_features)
  else:
    cos, sin = fourier_features(x, method)
    y = jnp.matmul(cos, a, precision=HIGHEST) + jnp.matmul(sin, b, precision=HIGHEST)
  if x.shape[-1] == a.shape[-1]:
    y = y + x
  return y


def layer_dims(width: int, depth: int, channels: int) -> list[tuple[int, int]]:
  """(m, n) of each layer: 2 -> width -> ... -> width -> channels (depth layers)."""
  if depth < 1:
    raise UserError(f"model.depth must be at least 1, got {depth}")
  if width < 1 or channels < 1:
    raise UserError(f"model.width and channels must be positive, got {width}, {channels}")
  if width > MAX_LAYER_DIM and depth > 1:
    raise UserError(
        f"model.width={width} needs 2^{width} Fourier terms per layer, far more than "
        f"fits in memory; use a width of at most {MAX_LAYER_DIM} (the thesis uses 4-10)")
  dims = [2] + [width] * (depth - 1) + [channels]
  return list(zip(dims[:-1], dims[1:]))


def param_shapes(width: int, depth: int, channels: int) -> list[tuple[int, int]]:
  """Shape of each layer's a (and of its b): (2^m, n)."""
  return [(2**m, n) for m, n in layer_dims(width, depth, channels)]


def num_params(width: int, depth: int, channels: int) -> int:
  """The true eq. 4.5 parameter count: sum over layers of 2 * 2^m * n."""
  return sum(2 * r * n for r, n in param_shapes(width, depth, channels))


def activation_bytes(width: int, depth: int, channels: int, points: int) -> int:
  """Rough float32 memory for a forward+backward pass over `points` inputs.

  The widest layer holds cos and sin features of shape (points, 2^m), kept for the
  backward pass, for each layer; the product form also builds intermediate copies.
  """
  per_point = sum(2 * 2**m * 3 for m, _ in layer_dims(width, depth, channels))
  return 4 * per_point * points


def check_fits_memory(width: int, depth: int, channels: int, points: int,
                      available_bytes: int) -> None:
  """Refuse, before allocating anything, a net whose features cannot fit in memory."""
  need = activation_bytes(width, depth, channels, points)
  if need > available_bytes:
    raise UserError(
        f"model.width={width} needs 2^{width}={2**width:,} Fourier terms per layer: about "
        f"{need / 2**30:.1f} GiB for {points:,} pixels at once, but only "
        f"{available_bytes / 2**30:.1f} GiB is available; lower model.width, "
        f"train.batch_size or eval_chunk")


def unflatten(weights: jax.Array, width: int, depth: int, channels: int) -> list[tuple[jax.Array, jax.Array]]:
  """Split a flat weight vector into per-layer (a, b); layout: a then b, layer by layer."""
  params, offset = [], 0
  for shape in param_shapes(width, depth, channels):
    size = math.prod(shape)
    a = weights[offset:offset + size].reshape(shape)
    b = weights[offset + size:offset + 2 * size].reshape(shape)
    params.append((a, b))
    offset += 2 * size
  return params


def flatten(params: Sequence[tuple[jax.Array, jax.Array]]) -> jax.Array:
  """Inverse of `unflatten`."""
  return jnp.concatenate([jnp.concatenate([a.ravel(), b.ravel()]) for a, b in params])


def hidden_values(params: Sequence[tuple[jax.Array, jax.Array]], coords: jax.Array,
                  method: str = "auto", keep_features: bool = False) -> list[jax.Array]:
  """Each layer's output at coords, the layers composed (the last before the tanh). The
  list costs nothing in net_apply, which keeps only the last: XLA keeps no unused output."""
  out, h = [], coords
  for a, b in params:
    h = layer_apply(h, a, b, method, keep_features)
    out.append(h)
  return out


def net_apply(params: Sequence[tuple[jax.Array, jax.Array]], coords: jax.Array,
              method: str = "auto", keep_features: bool = False) -> jax.Array:
  """The Fourier Net: layers composed, tanh on the output. coords: (..., 2)."""
  return jnp.tanh(hidden_values(params, coords, method, keep_features)[-1])


def render_apply(params: Sequence[tuple[jax.Array, jax.Array]], coords: jax.Array,
                 method: str = "auto") -> jax.Array:
  """net_apply for a forward pass alone (evaluation, decoding), the same values.

  Here the product form's features are computed once and kept. Otherwise XLA fuses them
  into the contractions that read them and recomputes them there: a 10x8 net rendered
  2.7x slower at 4,096 pixels a chunk (python -m benchmarks.render_speed). Training does
  without the barrier: its backward pass keeps the features anyway, and with it a step
  took 5-13% longer (7x8, 10x8, 8x5 nets, 4,096 pixels)."""
  return net_apply(params, coords, method, keep_features=True)


def render(weights: jax.Array, coords: jax.Array, width: int, depth: int, channels: int,
           method: str = "auto") -> jax.Array:
  """Pixels (..., channels) in [-1, 1] from a flat weight vector (one image)."""
  return net_apply(unflatten(weights, width, depth, channels), coords, method)


def fake_quantize(a: jax.Array, b: jax.Array, bits: int, step: float | None = None,
                  start: tuple[jax.Array, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
  """A layer's (a, b) rounded to the codec's per-layer uniform grid (dfm_flax/codec/fileformat.py,
  `quantize`: its own `step` if given, raised to the floor that holds the peak), with a
  straight-through gradient: quantisation-aware fine-tuning. With `start` (the layer's
  (a0, b0)), the difference from it is rounded, as a difference-coded file stores it."""
  a0, b0 = start if start is not None else (0.0, 0.0)
  da, db = a - a0, b - b0
  levels = 2 ** (bits - 1) - 1
  peak = jnp.maximum(jnp.max(jnp.abs(da)), jnp.max(jnp.abs(db)))
  floor = jnp.where(peak > 0, peak / levels, 1.0)
  step = floor if step is None else jnp.maximum(jnp.float32(step), floor)

  def q(w, w0, d):
    return w + jax.lax.stop_gradient(w0 + jnp.clip(jnp.round(d / step), -levels, levels) * step - w)
  return q(a, a0, da), q(b, b0, db)


class QuantStart(nnx.Variable):
  """The start a difference-coded file measures from (codec `start=`), one array per
  layer's a or b: set from a run, never trained (the optimizer takes nnx.Param only)."""


class FourierLayer(nnx.Module):
  """One Fourier layer with learnable a_k, b_k initialised N(0, init_variance)."""

  def __init__(self, in_dim: int, out_dim: int, *, init_variance: float,
               method: str = "auto", rngs: nnx.Rngs):
    init = nnx.initializers.normal(stddev=math.sqrt(init_variance))
    self.a = nnx.Param(init(rngs.params(), (2**in_dim, out_dim)))
    self.b = nnx.Param(init(rngs.params(), (2**in_dim, out_dim)))
    self.method = method

  def __call__(self, x: jax.Array) -> jax.Array:
    return layer_apply(x, self.a[...], self.b[...], self.method)


class FourierNet(nnx.Module):
  """2 -> width -> ... -> width -> channels Fourier layers, tanh output.

  `init_variance` is one number for all layers (the thesis) or a sequence, one per
  layer. `FourierNet.stack(nets)` makes one module of several same-size nets (one per
  image), weights stacked on a leading axis, evaluated with vmap: `count` > 0.
  """

  def __init__(self, width: int, depth: int, channels: int, *,
               init_variance: float | Sequence[float], method: str = "auto",
               quant_bits: int = 0, quant_steps: Sequence[float] = (),
               quant_start: bool = False, rngs: nnx.Rngs):
    if method not in METHODS:
      raise UserError(f"unknown model.method {method!r}; use one of {METHODS}")
    dims = layer_dims(width, depth, channels)
    variances = (list(init_variance) if isinstance(init_variance, (list, tuple))
                 else [init_variance] * len(dims))
    if len(variances) != len(dims):
      raise UserError(f"model.init_variance has {len(variances)} entries for {len(dims)} layers")
    self.width, self.depth, self.channels, self.method = width, depth, channels, method
    self.quant_bits = quant_bits  # > 0: forward pass sees the weights as the codec stores them.
    # Empty: each layer's grid is the bit depth's; else one step per layer (dfm_flax/codec/grids.py).
    self.quant_steps = tuple(float(s) for s in quant_steps)
    if self.quant_steps and len(self.quant_steps) != len(dims):
      raise UserError(f"model.quant_steps has {len(self.quant_steps)} entries for {len(dims)} layers")
    self.count = 0  # Nets stacked in this module; 0: one plain net.
    self.layers = nnx.List([
        FourierLayer(m, n, init_variance=v, method=method, rngs=rngs)
        for (m, n), v in zip(dims, variances)])
    # quant_start (with quant_bits): the grid is the difference from a start, zeros until
    # `set_start` (or a checkpoint) fills it.
    self.quant_start = nnx.List([nnx.List([QuantStart(jnp.zeros_like(layer.a[...])),
                                           QuantStart(jnp.zeros_like(layer.b[...]))])
                                 for layer in self.layers]) if quant_start else None

  def set_start(self, start) -> None:
    """The start (per-layer (a, b), e.g. `restore.load_start`) that quant_start rounds from."""
    if self.quant_start is None:
      raise ValueError("this net was not built with quant_start")
    got = [tuple(np.shape(a)) for a, _ in start]
    want = [tuple(layer.a.shape) for layer in self.layers]
    if got != want:
      raise UserError(f"the start's net (layers {got}) is not this net (layers {want})")
    for (va, vb), (a, b) in zip(self.quant_start, start):
      va[...], vb[...] = jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)

  @staticmethod
  def stack(nets: Sequence["FourierNet"]) -> "FourierNet":
    """One module holding `nets` (same sizes), each net's weights unchanged."""
    first = nets[0]
    for i, layer in enumerate(first.layers):
      layer.a = nnx.Param(jnp.stack([net.layers[i].a[...] for net in nets]))
      layer.b = nnx.Param(jnp.stack([net.layers[i].b[...] for net in nets]))
    first.count = len(nets)
    return first

  def params_list(self) -> list[tuple[jax.Array, jax.Array]]:
    """Each layer's (a, b); (count, 2^m, n) arrays for stacked nets."""
    params = [(layer.a[...], layer.b[...]) for layer in self.layers]
    if not self.quant_bits:
      return params
    starts = ([(a0[...], b0[...]) for a0, b0 in self.quant_start] if self.quant_start is not None
              else [None] * len(params))
    quantised = []
    for (a, b), step, start in zip(params, self.quant_steps or (None,) * len(params), starts):
      quantize = functools.partial(fake_quantize, bits=self.quant_bits, step=step, start=start)
      quantised.append((jax.vmap(quantize) if self.count else quantize)(a, b))
    return quantised

  def net_params(self, index: int | None = None) -> list[tuple[jax.Array, jax.Array]]:
    """One net's (a, b) per layer: net `index` of a stack, or the plain net."""
    if not self.count:
      return self.params_list()
    if index is None or not 0 <= index < self.count:
      raise UserError(f"this module stacks {self.count} nets; pick one of 0..{self.count - 1}")
    return [(a[index], b[index]) for a, b in self.params_list()]

  def __call__(self, coords: jax.Array) -> jax.Array:
    """coords (..., 2) -> (..., channels); stacked nets take (count, ..., 2)."""
    if self.count:
      return jax.vmap(lambda p, c: net_apply(p, c, self.method))(self.params_list(), coords)
    return net_apply(self.params_list(), coords, self.method)
