"""Levenberg-Marquardt fits (dfm_flax/nets/levenberg.py) against a plain numpy implementation."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dfm_flax.data import images
from dfm_flax.errors import UserError
from dfm_flax.nets import fourier, levenberg
from dfm_flax.tasks import meta_learning
from experiments import meta as meta_config


def _crop(size=8, seed=0):
  rng = np.random.default_rng(seed)
  # A smooth colour pattern plus a little noise: something a 3x3 net can partly fit.
  y, x = np.mgrid[0:size, 0:size] / size
  img = np.stack([np.sin(3 * x + y), np.cos(2 * y), x * y], -1) * 0.6
  img = img + 0.05 * rng.standard_normal(img.shape)
  return jnp.asarray(img.reshape(-1, 3), jnp.float32)


def _net(width=3, depth=3, variance=0.05, seed=1):
  rng = np.random.default_rng(seed)
  return [(jnp.asarray(rng.normal(0, np.sqrt(variance), s), jnp.float32),
           jnp.asarray(rng.normal(0, np.sqrt(variance), s), jnp.float32))
          for s in fourier.param_shapes(width, depth, 3)]


def numpy_refit(w, coords, target, iterations):
  """Independent refit of the last layer: its features cos/sin(2 pi k.h) by numpy from the
  layers before it, each channel's damped Gauss-Newton iterations in float64, by loops."""
  params = fourier.unflatten(jnp.asarray(w, jnp.float32), 3, 3, 3)
  h = np.asarray(fourier.hidden_values(params[:-1], coords, "direct")[-1], np.float64)
  k = fourier.frequencies(h.shape[1]).astype(np.float64)
  f = np.concatenate([np.cos(2 * np.pi * h @ k.T), np.sin(2 * np.pi * h @ k.T)], 1)
  terms = k.shape[0]
  theta = np.concatenate([np.asarray(a, np.float64) for a in params[-1]], 0)
  t = np.asarray(target, np.float64)
  for _ in range(iterations):
    for c in range(theta.shape[1]):
      z = f @ theta[:, c] + h[:, c]  # the 3x3 net's last layer has m == n: "+ x"
      r = np.tanh(z) - t[:, c]
      j = f * (1 - np.tanh(z) ** 2)[:, None]
      a = j.T @ j
      trial = theta[:, c] - np.linalg.solve(
          a + levenberg.REFIT_DAMPING * np.diag(np.diag(a) + levenberg.EPS), j.T @ r)
      if np.sum((np.tanh(f @ trial + h[:, c]) - t[:, c]) ** 2) < np.sum(r ** 2):
        theta[:, c] = trial
  front = np.asarray(fourier.flatten(params[:-1]), np.float64) if len(params) > 1 else np.zeros(0)
  return np.concatenate([front, theta[:terms].ravel(), theta[terms:].ravel()])


def numpy_lm(params, coords, target, steps, damping, down, up=levenberg.UP, search=False,
             refit=0):
  """Independent: the Jacobian by reverse mode, the step by numpy in float64; search: each
  step the best of the grid of dampings and lengths, by loops; refit: numpy_refit of each
  point tried."""
  w = np.asarray(fourier.flatten(params), np.float64)
  project = lambda v: numpy_refit(v, coords, target, refit) if refit else v  # noqa: E731

  def residual(v):
    p = fourier.unflatten(jnp.asarray(v, jnp.float32), 3, 3, 3)
    return np.asarray(fourier.net_apply(p, coords, "direct") - target, np.float64).ravel()

  jac = jax.jacrev(lambda v: (fourier.net_apply(fourier.unflatten(v, 3, 3, 3), coords, "direct")
                              - target).ravel())
  lam = damping
  for _ in range(steps):
    r = residual(w)
    j = np.asarray(jac(jnp.asarray(w, jnp.float32)), np.float64)
    a = j.T @ j
    solve = lambda lam: np.linalg.solve(a + lam * np.diag(np.diag(a) + levenberg.EPS), j.T @ r)  # noqa: E731
    if search:
      loss, trial, kept = min((np.sum(residual(p) ** 2), list(p), l)
                              for l in lam * np.asarray(levenberg.SEARCH_DAMPINGS)
                              for t in levenberg.SEARCH_LENGTHS
                              for p in [project(w - t * solve(l))])
      w, lam = (np.asarray(trial), kept) if loss < np.sum(r ** 2) else (w, lam * levenberg.SEARCH_UP)
      continue
    trial = project(w - solve(lam))
    if np.sum(residual(trial) ** 2) < np.sum(r ** 2):
      w, lam = trial, lam / down
    else:
      lam = lam * up
  return w, lam


def test_lm_steps_match_a_numpy_implementation():
  coords = jnp.asarray(images.pixel_grid(8, 8, (0.0, 0.5)))
  target, start = _crop(), _net()
  params, lam, before = levenberg.fit(start, coords, target, 4, "auto", 0.1, 1.5)
  expect, expect_lam = numpy_lm(start, coords, target, 4, 0.1, 1.5)
  np.testing.assert_allclose(np.asarray(fourier.flatten(params)), expect, rtol=2e-3, atol=2e-4)
  assert float(lam) == pytest.approx(expect_lam, rel=1e-5)
  assert float(before) == pytest.approx(float(meta_learning.mse(start, coords, target, "auto")), rel=1e-5)
  assert np.abs(expect - np.asarray(fourier.flatten(start))).max() > 1e-2  # it moved


def test_lm_search_steps_match_a_numpy_implementation_and_beat_plain_steps():
  coords = jnp.asarray(images.pixel_grid(8, 8, (0.0, 0.5)))
  target, start = _crop(seed=5), _net(seed=6)
  params, lam, _ = levenberg.fit(start, coords, target, 4, "auto", 0.1, 1.5, search=True)
  expect, expect_lam = numpy_lm(start, coords, target, 4, 0.1, 1.5, search=True)
  np.testing.assert_allclose(np.asarray(fourier.flatten(params)), expect, rtol=2e-3, atol=2e-4)
  assert float(lam) == pytest.approx(expect_lam, rel=1e-5)
  plain, _, _ = levenberg.fit(start, coords, target, 4, "auto", 0.1, 1.5)
  searched = float(meta_learning.mse(params, coords, target, "auto"))
  assert searched < 0.9 * float(meta_learning.mse(plain, coords, target, "auto"))
  # At an exact fit no point is lower: the step is dropped and the damping raised past the grid.
  exact = fourier.net_apply(start, coords, "auto")
  kept, lam, _ = levenberg.fit(start, coords, exact, 1, "auto", 0.1, 1.5, search=True)
  np.testing.assert_array_equal(np.asarray(fourier.flatten(kept)), np.asarray(fourier.flatten(start)))
  assert float(lam) == pytest.approx(0.1 * levenberg.SEARCH_UP)


@pytest.mark.parametrize("search", [False, True])
def test_lm_steps_that_refit_the_last_layer_match_a_numpy_implementation(search):
  coords = jnp.asarray(images.pixel_grid(8, 8, (0.0, 0.5)))
  target, start = _crop(seed=7), _net(seed=8)
  params, lam, _ = levenberg.fit(start, coords, target, 3, "auto", 0.1, 1.5, search=search,
                                 refit=2)
  expect, expect_lam = numpy_lm(start, coords, target, 3, 0.1, 1.5, search=search, refit=2)
  np.testing.assert_allclose(np.asarray(fourier.flatten(params)), expect, rtol=2e-3, atol=2e-4)
  assert float(lam) == pytest.approx(expect_lam, rel=1e-5)
  without, _, _ = levenberg.fit(start, coords, target, 3, "auto", 0.1, 1.5, search=search)
  assert float(meta_learning.mse(params, coords, target, "auto")) < 0.9 * float(
      meta_learning.mse(without, coords, target, "auto"))


@pytest.mark.parametrize("channels", [3, 1])
def test_the_refit_recovers_a_last_layer_from_the_layers_before_it(channels):
  # A target that a net makes exactly: the refit, given that net's first layers and a
  # last layer far from its own, finds a last layer that makes it again. A 3x3 net's last
  # layer adds its input for colour (m == n), not for grey.
  coords = jnp.asarray(images.pixel_grid(8, 8, (0.0, 0.5)))
  net = _net(seed=9, variance=0.02)
  net[-1] = tuple(w[:, :channels] for w in net[-1])
  target = fourier.net_apply(net, coords, "auto")
  wrong = net[:-1] + [(jnp.zeros_like(net[-1][0]), jnp.zeros_like(net[-1][1]))]
  assert float(meta_learning.mse(wrong, coords, target, "auto")) > 1e-3
  refitted, out = levenberg.refit_last(wrong, coords, target, "auto", 8)
  assert float(meta_learning.mse(refitted, coords, target, "auto")) < 1e-8
  # what it returns as the output is the net's own output with the refitted layer
  np.testing.assert_allclose(np.asarray(out), np.asarray(fourier.net_apply(refitted, coords, "auto")),
                             atol=1e-6)
  for kept, was in zip(refitted[:-1], net[:-1]):  # the layers before it are untouched
    np.testing.assert_array_equal(np.asarray(kept[0]), np.asarray(was[0]))
  # no iteration raises a channel's loss: zero iterations change nothing
  same, _ = levenberg.refit_last(wrong, coords, target, "auto", 0)
  np.testing.assert_array_equal(np.asarray(same[-1][0]), np.asarray(wrong[-1][0]))


def test_lm_never_raises_the_loss_and_beats_as_many_gradient_steps():
  coords = jnp.asarray(images.pixel_grid(8, 8, (0.0, 0.5)))
  target, params = _crop(seed=3), _net(seed=4)
  losses = [float(meta_learning.mse(params, coords, target, "auto"))]
  lam = 0.1
  for _ in range(6):
    params, lam, _ = levenberg.fit(params, coords, target, 1, "auto", lam, 1.5)
    losses.append(float(meta_learning.mse(params, coords, target, "auto")))
  assert all(b <= a for a, b in zip(losses, losses[1:]))
  assert losses[-1] < 0.5 * losses[0]
  lrs = [1.0 / 2**m for m, _ in fourier.layer_dims(3, 3, 3)]
  gd, _ = meta_learning.adapt(_net(seed=4), coords, target, 6, lrs, "auto", False)
  assert losses[-1] < float(meta_learning.mse(gd, coords, target, "auto"))


def test_lm_refuses_a_whole_photograph_in_one_line():
  with pytest.raises(UserError, match="Levenberg-Marquardt steps on a 7x8 net"):
    levenberg.check_size(7, 8, 3, 512 * 512)
  levenberg.check_size(6, 5, 3, 32 * 32)  # a crop: fine
  c = meta_config.get_config("smoke")
  c.meta.inner_optimizer, c.meta.crop = "lm", 512
  c.model.width, c.model.depth = 7, 8
  with pytest.raises(UserError, match="Levenberg-Marquardt"):
    meta_learning.Task(c)
  c = meta_config.get_config("smoke")
  c.meta.inner_optimizer = "newton"
  with pytest.raises(UserError, match="unknown meta.inner_optimizer 'newton'"):
    meta_learning.Task(c)


def _flat_grads(grads, layers):
  return np.asarray(fourier.flatten([(grads.layers[i].a[...], grads.layers[i].b[...])
                                     for i in range(layers)]))


def _lm_task(**changes):
  c = meta_config.get_config("smoke")
  c.meta.inner_optimizer = "lm"
  for k, v in changes.items():
    c.meta[k] = v
  c.model.init_variance = 0.05
  return meta_learning.Task(c), c


@pytest.mark.parametrize("search,refit", [(False, 0), (True, 0), (True, 2)])
def test_reptile_with_lm_inner_steps_moves_theta_to_the_mean_lm_fit(search, refit):
  task, c = _lm_task(algorithm="reptile", lm_search=search, lm_refit=refit)
  model = task.build_model(nnx.Rngs(0))
  batch = task.batch(2)
  theta = model.params_list()
  phis = [numpy_lm(theta, task.coords, t, c.meta.inner_steps, c.meta.lm_damping,
                   c.meta.lm_down, search=search, refit=refit)[0] for t in batch["target"]]
  grads = nnx.grad(lambda m: task.loss(m, batch)[0])(model)
  expect = np.asarray(fourier.flatten(theta)) - np.mean(phis, 0)
  got = _flat_grads(grads, len(theta))
  np.testing.assert_allclose(got, expect, rtol=2e-3, atol=5e-4)
  assert np.abs(expect).max() > 1e-2


def test_first_order_maml_with_lm_is_the_gradient_at_the_adapted_weights():
  task, c = _lm_task(algorithm="maml", first_order=True)
  model = task.build_model(nnx.Rngs(0))
  batch = task.batch(1)
  theta = model.params_list()
  grads = []
  for t in batch["target"]:
    phi = fourier.unflatten(jnp.asarray(numpy_lm(theta, task.coords, t, c.meta.inner_steps,
                                                 c.meta.lm_damping, c.meta.lm_down)[0],
                                        jnp.float32), 3, 3, 3)
    grads.append(np.asarray(fourier.flatten(jax.grad(meta_learning.mse)(phi, task.coords, t, "auto"))))
  got = _flat_grads(nnx.grad(lambda m: task.loss(m, batch)[0])(model), len(theta))
  np.testing.assert_allclose(got, np.mean(grads, 0), rtol=5e-3, atol=1e-5)


def test_lm_speed_benchmark_times_every_fit_against_1000_adam_steps():
  from tests.helpers import run_cli
  proc = run_cli("studies.lm_speed", "--nets", "2x2", "--crop", "8", "--repeats", "1")
  assert proc.returncode == 0, proc.stderr
  lines = [line for line in proc.stdout.splitlines() if line.startswith("2x2 net")]
  assert [line.split(",")[1].split("steps")[0].strip() for line in lines] == [
      "10 adam", "1000 adam", "10 lm", "10 lm_search", "10 lm_refit"]
  assert "(1.00x 1,000 Adam steps)" in lines[1]


def test_lm_settings_of_runs_saved_before_them_are_the_config_files():
  default = meta_config.get_config().meta
  old = meta_config.get_config().meta
  for key in ("lm_damping", "lm_down", "lm_search", "lm_refit"):
    del old[key]
  expect = {"damping": default.lm_damping, "down": default.lm_down, "search": False, "refit": 0}
  assert meta_learning.lm_settings(old) == expect
  assert meta_learning.lm_settings(None) == expect  # a start with no meta settings (a compress run)
  assert meta_learning.lm_settings(meta_config.get_config("lm_search").meta)["search"] is True
  refit = meta_learning.lm_settings(meta_config.get_config("lm_refit").meta)
  assert refit["search"] is True and refit["refit"] == levenberg.REFIT
  c = meta_config.get_config("smoke")
  c.meta.inner_optimizer, c.meta.lm_refit = "lm", -1
  with pytest.raises(UserError, match="meta.lm_refit counts Gauss-Newton iterations"):
    meta_learning.Task(c)
