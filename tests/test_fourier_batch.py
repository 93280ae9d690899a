"""The batched renderer of the generative decoder against the float64 numpy loop and
finite differences, on both of its paths (terms written out, stacked features)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dfm_flax.nets import fourier, fourier_batch, reference


def weights_for(images, width, depth, channels, gain=0.1, seed=0):
  """Per layer variance gain^2 / 2^m: outputs of order one, not chaotic (see test_fourier)."""
  keys = jax.random.split(jax.random.key(seed), depth)
  per_image = []
  for i in range(images):
    per_image.append(fourier.flatten([
        (gain / math.sqrt(r) * jax.random.normal(jax.random.fold_in(k, 2 * i), (r, n)),
         gain / math.sqrt(r) * jax.random.normal(jax.random.fold_in(k, 2 * i + 1), (r, n)))
        for k, (r, n) in zip(keys, fourier.param_shapes(width, depth, channels))]))
  return jnp.stack(per_image)


@pytest.fixture(params=["terms", "stacked"])
def path(request, monkeypatch):
  """Every layer through one path: written out term by term, or stacked for a product."""
  monkeypatch.setattr(fourier_batch, "UNROLL_LIMIT", 10**9 if request.param == "terms" else 0)
  return request.param


def test_sincos_turns_matches_numpy_over_many_turns():
  x = np.linspace(-7.3, 7.3, 100_001, dtype=np.float32)
  cos, sin = fourier_batch.sincos_turns(jnp.asarray(x))
  np.testing.assert_allclose(cos, np.cos(2 * np.pi * x.astype(np.float64)), atol=1e-6, rtol=0)
  np.testing.assert_allclose(sin, np.sin(2 * np.pi * x.astype(np.float64)), atol=1e-6, rtol=0)


@pytest.mark.parametrize("m,n", [(2, 4), (4, 4), (4, 1), (5, 3), (6, 6)])
def test_layer_matches_numpy_loop(path, m, n):
  x = jax.random.uniform(jax.random.key(m), (3, m, 40), minval=-2, maxval=2)
  a, b = (jax.random.normal(jax.random.key(10 * m + s), (3, 2**m, n)) / 2**(m / 2) for s in (1, 2))
  got = fourier_batch.layer(x, a, b)
  for i in range(3):
    expect = reference.layer(np.asarray(x[i]).T, a[i], b[i]).T
    np.testing.assert_allclose(got[i], expect, atol=2e-5, rtol=0)


@pytest.mark.parametrize("width,depth,channels", [(4, 6, 1), (6, 4, 3)])
def test_render_matches_the_numpy_net_for_every_image(path, width, depth, channels):
  coords = jax.random.uniform(jax.random.key(7), (50, 2))
  weights = weights_for(4, width, depth, channels)
  got = fourier_batch.render(weights, coords, width, depth, channels)
  assert got.shape == (4, 50, channels)
  for i in range(4):
    expect = reference.net(fourier.unflatten(np.asarray(weights[i]), width, depth, channels), coords)
    np.testing.assert_allclose(got[i], expect, atol=2e-5)


@pytest.mark.parametrize("width,depth,channels", [(4, 4, 1), (5, 3, 3)])
def test_gradients_match_finite_differences_of_the_numpy_net(path, width, depth, channels):
  coords = jax.random.uniform(jax.random.key(0), (30, 2))
  weights = weights_for(2, width, depth, channels)
  target = jax.random.uniform(jax.random.key(3), (2, 30, channels), minval=-1, maxval=1)
  loss = lambda w: jnp.sum((fourier_batch.render(w, coords, width, depth, channels) - target)**2)  # noqa: E731
  grad = np.asarray(jax.grad(loss)(weights), np.float64)

  def numpy_loss(w):
    return sum(np.sum((reference.net(fourier.unflatten(w[i], width, depth, channels), coords)
                       - np.asarray(target[i], np.float64))**2) for i in range(2))
  w64 = np.asarray(weights, np.float64)
  for seed in range(3):  # Directional derivatives along random directions.
    v = np.random.default_rng(seed).normal(size=w64.shape)
    eps = 1e-5
    fd = (numpy_loss(w64 + eps * v) - numpy_loss(w64 - eps * v)) / (2 * eps)
    assert float(np.sum(grad * v)) == pytest.approx(fd, rel=1e-3, abs=1e-4)


def test_gradients_match_autodiff_of_the_per_image_form():
  """The hand-written backward pass against jax's own derivative of fourier.render."""
  coords = jax.random.uniform(jax.random.key(4), (64, 2))
  weights = weights_for(5, 4, 6, 1)
  target = jax.random.uniform(jax.random.key(5), (5, 64, 1))
  per_image = lambda w: jax.vmap(lambda v: fourier.render(v, coords, 4, 6, 1))(w)  # noqa: E731
  batched = lambda w: fourier_batch.render(w, coords, 4, 6, 1)  # noqa: E731
  grads = [jax.grad(lambda w: jnp.mean((f(w) - target)**2))(weights) for f in (per_image, batched)]
  np.testing.assert_allclose(grads[1], grads[0], atol=1e-6 * float(jnp.max(jnp.abs(grads[0]))))


def test_every_product_is_full_precision_whatever_the_default(path):
  coords = jnp.zeros((8, 2))
  weights = weights_for(2, 6, 3, 3)
  loss = lambda w: jnp.sum(fourier_batch.render(w, coords, 6, 3, 3)**2)  # noqa: E731
  with jax.default_matmul_precision("bfloat16"):
    text = jax.jit(jax.value_and_grad(loss)).lower(weights).as_text()
  dots = [line for line in text.splitlines() if "dot_general" in line]
  assert dots
  for line in dots:
    assert "precision = [HIGHEST, HIGHEST]" in line, line
