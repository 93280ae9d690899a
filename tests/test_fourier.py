"""The Fourier layer against a plain numpy loop over k, and the net's bookkeeping."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dfm_flax.errors import UserError
from dfm_flax.nets import fourier, reference


def random_layer(m, n, seed=0, points=33):
  kx, ka, kb = jax.random.split(jax.random.key(seed), 3)
  x = jax.random.uniform(kx, (points, m))
  scale = 1 / math.sqrt(2**m)  # Output of order 1, so 1e-5 is a float32-sized tolerance.
  return (x, scale * jax.random.normal(ka, (2**m, n)), scale * jax.random.normal(kb, (2**m, n)))


@pytest.mark.parametrize("method", fourier.METHODS)
@pytest.mark.parametrize("m,n", [(1, 1), (2, 4), (2, 3), (3, 3), (4, 4), (4, 1), (6, 6), (7, 3), (8, 8)])
def test_layer_matches_numpy_loop(method, m, n):
  x, a, b = random_layer(m, n, seed=m * 10 + n)
  got = fourier.layer_apply(x, a, b, method)
  np.testing.assert_allclose(got, reference.layer(x, a, b), atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", fourier.METHODS)
def test_features_match_numpy(method):
  x = jax.random.uniform(jax.random.key(3), (17, 5))
  cos, sin = fourier.fourier_features(x, method)
  k = fourier.frequencies(5).astype(np.float64)
  phase = 2 * np.pi * np.asarray(x, np.float64) @ k.T
  np.testing.assert_allclose(cos, np.cos(phase), atol=1e-5)
  np.testing.assert_allclose(sin, np.sin(phase), atol=1e-5)


def test_frequencies_are_all_binary_vectors():
  k = fourier.frequencies(4)
  assert k.shape == (16, 4)
  assert len({tuple(row) for row in k}) == 16
  assert set(np.unique(k)) == {0.0, 1.0}


def test_residual_only_when_dims_match():
  x, a, b = random_layer(3, 3)
  zero = jnp.zeros_like(a)
  np.testing.assert_allclose(fourier.layer_apply(x, zero, zero), x, atol=1e-7)
  x, a, b = random_layer(3, 2)
  assert np.all(fourier.layer_apply(x, jnp.zeros_like(a), jnp.zeros_like(b)) == 0)


def test_param_counts_follow_eq_4_5():
  # 2->4: 2*4*4, four 4->4: 2*16*4 each, 4->1: 2*16*1.
  assert fourier.num_params(4, 6, 1) == 32 + 4 * 128 + 32 == 576
  assert fourier.num_params(8, 6, 3) == 2 * 4 * 8 + 4 * 2 * 256 * 8 + 2 * 256 * 3
  net = fourier.FourierNet(6, 10, 3, init_variance=1e-2, rngs=nnx.Rngs(0))
  counted = sum(p.size for p in jax.tree.leaves(nnx.state(net, nnx.Param)))
  assert counted == fourier.num_params(6, 10, 3) == 6576


@pytest.mark.parametrize("method", fourier.METHODS)
def test_functional_render_matches_module(method):
  net = fourier.FourierNet(4, 5, 3, init_variance=0.05, method=method, rngs=nnx.Rngs(1))
  coords = jax.random.uniform(jax.random.key(2), (50, 2))
  weights = fourier.flatten(net.params_list())
  assert weights.shape == (fourier.num_params(4, 5, 3),)
  np.testing.assert_allclose(fourier.render(weights, coords, 4, 5, 3, method), net(coords), atol=1e-6)
  for (a1, b1), (a2, b2) in zip(fourier.unflatten(weights, 4, 5, 3), net.params_list()):
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(b1, b2)


def realistic_weights(key, width, depth, channels, gain=0.05):
  """Weights at the scale training uses (variance gain / 2^m per layer): deep nets
  with larger weights are chaotic, and float32 rounding differences then grow."""
  keys = jax.random.split(key, depth)
  return fourier.flatten([
      (gain / math.sqrt(r) * jax.random.normal(k, (r, n)),
       gain / math.sqrt(r) * jax.random.normal(jax.random.fold_in(k, 1), (r, n)))
      for k, (r, n) in zip(keys, fourier.param_shapes(width, depth, channels))])


def test_render_vmaps_over_images():
  n = fourier.num_params(4, 4, 1)
  weights = 0.1 * jax.random.normal(jax.random.key(0), (3, n))
  coords = jax.random.uniform(jax.random.key(1), (20, 2))
  batched = jax.vmap(lambda w: fourier.render(w, coords, 4, 4, 1))(weights)
  for i in range(3):
    np.testing.assert_allclose(batched[i], fourier.render(weights[i], coords, 4, 4, 1), atol=1e-5)


@pytest.mark.parametrize("method", fourier.METHODS)
def test_deep_net_matches_numpy(method):
  coords = jax.random.uniform(jax.random.key(5), (64, 2))
  weights = realistic_weights(jax.random.key(6), 8, 6, 3, gain=0.1)
  expect = reference.net(fourier.unflatten(np.asarray(weights), 8, 6, 3), coords)
  np.testing.assert_allclose(fourier.render(weights, coords, 8, 6, 3, method), expect, atol=1e-5)


def test_init_variance_is_honoured():
  net = fourier.FourierNet(8, 3, 3, init_variance=[0.5, 2e-3, 1e-10], rngs=nnx.Rngs(0))
  middle = np.asarray(net.layers[1].a[...])  # 256 x 8 = 2048 draws
  assert abs(middle.var() / 2e-3 - 1) < 0.1
  assert abs(np.asarray(net.layers[0].b[...]).std()) > 0.1
  assert np.abs(np.asarray(net.layers[2].a[...])).max() < 1e-3


def numpy_net_loss(weights, coords, width, depth, channels):
  """sum(tanh(net(coords))^2) in float64 with the numpy loop, for finite differences."""
  return np.sum(reference.net(fourier.unflatten(weights, width, depth, channels), coords) ** 2)


@pytest.mark.parametrize("method", fourier.METHODS)
def test_gradients_match_finite_differences_of_the_numpy_loop(method):
  coords = jax.random.uniform(jax.random.key(0), (32, 2))
  weights = realistic_weights(jax.random.key(1), 5, 4, 3, gain=0.1)
  grad = jax.grad(lambda w: jnp.sum(fourier.render(w, coords, 5, 4, 3, method) ** 2))(weights)
  w64 = np.asarray(weights, np.float64)
  for seed in range(3):  # Directional derivatives along random directions.
    v = np.random.default_rng(seed).normal(size=w64.shape)
    eps = 1e-5
    fd = (numpy_net_loss(w64 + eps * v, coords, 5, 4, 3)
          - numpy_net_loss(w64 - eps * v, coords, 5, 4, 3)) / (2 * eps)
    assert float(np.dot(np.asarray(grad, np.float64), v)) == pytest.approx(fd, rel=1e-3, abs=1e-4)


@pytest.mark.parametrize("method", fourier.METHODS)
@pytest.mark.parametrize("precision", ["bfloat16", "tensorfloat32"])
def test_every_contraction_is_full_precision_whatever_the_default(method, precision):
  """On GPU/TPU the default float32 matmul is TF32/bfloat16: phases would be off by a
  pixel. The lowered net (forward and gradient) must ask for HIGHEST in every dot."""
  coords = jnp.zeros((8, 2))
  weights = realistic_weights(jax.random.key(1), 6, 4, 3, gain=0.1)
  loss = lambda w: jnp.sum(fourier.render(w, coords, 6, 4, 3, method) ** 2)  # noqa: E731
  with jax.default_matmul_precision(precision):
    text = jax.jit(jax.value_and_grad(loss)).lower(weights).as_text()
  dots = [line for line in text.splitlines() if "dot_general" in line]
  assert dots
  for line in dots:
    assert "precision = [HIGHEST, HIGHEST]" in line, line


def test_phases_need_no_dot_product():
  x = jax.random.uniform(jax.random.key(2), (5, 7))
  text = jax.jit(fourier.phases).lower(x).as_text()
  assert "dot_general" not in text
  expect = np.asarray(x, np.float64) @ fourier.frequencies(7).astype(np.float64).T
  np.testing.assert_allclose(fourier.phases(x), expect, atol=1e-6)


def test_too_wide_is_refused_before_allocating():
  with pytest.raises(UserError, match="2\\^30"):
    fourier.layer_dims(30, 6, 3)
  with pytest.raises(UserError, match="GiB"):
    fourier.check_fits_memory(20, 6, 3, points=2**14, available_bytes=8 * 2**30)
  fourier.check_fits_memory(8, 6, 3, points=2**14, available_bytes=8 * 2**30)


def test_unknown_method_is_refused():
  with pytest.raises(UserError, match="method"):
    fourier.FourierNet(4, 3, 1, init_variance=0.1, method="fft", rngs=nnx.Rngs(0))


def test_render_apply_keeps_the_features_and_draws_what_net_apply_draws():
  rng = np.random.default_rng(5)
  params = [(rng.normal(0, 0.1, s).astype(np.float32), rng.normal(0, 0.1, s).astype(np.float32))
            for s in fourier.param_shapes(6, 4, 3)]  # 6-dim layers: the product form.
  coords = jnp.asarray(rng.random((500, 2), np.float32) * 0.5)
  np.testing.assert_allclose(fourier.render_apply(params, coords),
                             fourier.net_apply(params, coords), rtol=0, atol=1e-6)
  lowered = lambda f: jax.jit(lambda c: f(params, c)).lower(coords).as_text()  # noqa: E731
  # The barrier that keeps XLA from recomputing the features inside the contractions: in
  # the forward pass alone, not in the one that training differentiates.
  assert "optimization_barrier" in lowered(fourier.render_apply)
  assert "optimization_barrier" not in lowered(fourier.net_apply)
