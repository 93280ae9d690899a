"""Levenberg-Marquardt fits of a whole Fourier net to one small image.

Ten gradient steps from a meta-learned start stall a few dB above each crop's mean colour
(docs/meta_learning.md). A crop's fit is a small least-squares problem (3,072 residuals; a 4x3 net has 256 weights), so each step
here solves the Gauss-Newton system of the whole net instead:

    (J^T J + lam (diag(J^T J) + eps)) dw = J^T r,      r = net(w)(x) - target,

with Marquardt's scaling (each weight damped by its own curvature, so the 4-term first
layer and the 2^m-term later layers need no per-layer step). A step that lowers the loss
is kept and lam divided by `down`; one that does not is dropped and lam multiplied by
`up`. Both count as a step: each costs one Jacobian and one solve.

With `search`, a step tries more than one damping from its one Jacobian: the damped system
solved at lam times each of SEARCH_DAMPINGS, each solution taken at each of SEARCH_LENGTHS,
and keeps whichever of those 28 points has the lowest loss (its damping becomes lam). A
point costs one solve of the weights x weights system and one forward pass, far less than the
Jacobian's one forward-mode pass per weight, so a step costs about 1.5x a plain one. If none lowers the loss, the step is dropped and lam multiplied by
SEARCH_UP.

With `refit` (n > 0), every point a step tries first has its last layer refitted to the
image: n Gauss-Newton iterations on that layer's weights alone, the layers before it held
(variable projection, Golub and Pereyra 1973: the net's output is tanh of a linear map of
the last layer's weights, so that sub-problem is nearly linear and small: per channel, as
many unknowns as the layer has terms). A point's cost grows by a pass of the last layer
and a few small solves per iteration; the Jacobian does not change.

The Jacobian is (pixels * channels) x weights, built by forward-mode differentiation in
chunks of jacobian_chunk() weights (so memory is the Jacobian's, not every weight's tangent
through every layer at once): fine for crops and small nets, not for whole photographs
(`check_size` refuses those in one line).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from dfm_flax.errors import UserError
from dfm_flax.nets import fourier

UP = 4.0
EPS = 1e-6  # floor of the damping: weights whose curvature is ~0 (a random start's tiny ones)
# The Jacobian and the weights x weights system, float32. Past this the fit is not what LM
# is for: the solve grows as weights^3.
MAX_BYTES = 2**30
# The search's dampings (times the current one) and step lengths, chosen on training crops
# (a finer damping grid was no better; fewer lengths were worse).
SEARCH_DAMPINGS = tuple(4.0**k for k in range(-3, 4))
SEARCH_LENGTHS = (0.5, 1.0, 1.5, 2.0)
SEARCH_UP = 4 * SEARCH_DAMPINGS[-1]
# The refit's Gauss-Newton iterations and their damping (times each weight's curvature),
# chosen on training crops: each iteration up to 4 gained, 8 did not.
REFIT = 4
REFIT_DAMPING = 1e-3


def jacobian_chunk() -> int:
  """Tangents per forward-mode pass. On a CPU small chunks run fastest (16 was the best of
  4-128 for a 4x3 net on a 32x32 crop); on an accelerator larger ones (128, not yet tuned)."""
  return 16 if jax.default_backend() == "cpu" else 128


def check_size(width: int, depth: int, channels: int, points: int) -> None:
  """Refuse, in one line, a net and image too large for Levenberg-Marquardt steps."""
  weights = fourier.num_params(width, depth, channels)
  need = 4 * weights * (points * channels + weights)
  if need > MAX_BYTES:
    raise UserError(
        f"Levenberg-Marquardt steps on a {width}x{depth} net ({weights:,} weights) over "
        f"{points:,} pixels need {need / 2**30:.1f} GiB for the Jacobian and the system "
        f"(limit {MAX_BYTES / 2**30:.0f}); they are for small crops and nets: use gradient steps "
        f"(meta.inner_optimizer=sgd) or a smaller crop or net")


def refit_last(params, coords, target, method: str, iterations: int):
  """(params with the last layer refitted to target, the net's output with it): `iterations`
  damped Gauss-Newton iterations on the last layer's weights alone (the layers before it
  fixed). Each channel is its own small problem (its column of a and b); an iteration that
  does not lower a channel's loss leaves that channel's column as it was. The output is the
  net's own last layer (fourier.layer_apply), so it is what net_apply gives for them."""
  *front, (a, b) = params
  h = fourier.hidden_values(front, coords, method)[-1] if front else coords
  cos, sin = fourier.fourier_features(h, method)
  features = jnp.concatenate([cos, sin], -1)  # (pixels, 2 * terms): the layer's Jacobian
  terms = a.shape[0]
  output = lambda theta: jnp.tanh(  # noqa: E731
      fourier.layer_apply(h, theta[:terms], theta[terms:], method))

  def solve(d, r, theta):  # one channel: d = tanh', r = residual, theta = its weights
    jac = features * d[:, None]
    curvature = jnp.matmul(jac.T, jac, precision=fourier.HIGHEST)
    grad = jnp.matmul(jac.T, r, precision=fourier.HIGHEST)
    damped = curvature + REFIT_DAMPING * jnp.diag(jnp.diag(curvature) + EPS)
    return theta - jnp.linalg.solve(damped, grad)

  theta = jnp.concatenate([a, b], 0)  # (2 * terms, channels)
  out = output(theta)
  for _ in range(iterations):
    r = out - target
    trial = jax.vmap(solve, in_axes=1, out_axes=1)(1 - out**2, r, theta)
    trial_out = output(trial)
    better = jnp.sum((trial_out - target) ** 2, 0) < jnp.sum(r**2, 0)
    theta = jnp.where(better[None, :], trial, theta)
    out = jnp.where(better[None, :], trial_out, out)
  return [*front, (theta[:terms], theta[terms:])], out


def fit(params, coords, target, steps: int, method: str, damping, down: float,
        up: float = UP, search: bool = False, refit: int = 0):
  """`steps` Levenberg-Marquardt steps from params on one image (coords (N, 2), target
  (N, C) in [-1, 1]). Returns (params, damping after them, MSE at the start). The damping
  is returned so that a fit can go on where it stopped (studies/meta_start.py).
  search: each step tries the grid of dampings and lengths (module docstring); down and up
  are then unused. refit: Gauss-Newton iterations on the last layer at each point tried."""
  flat, unravel = ravel_pytree(params)

  def residual(w):
    return (fourier.net_apply(unravel(w), coords, method) - target).ravel()

  def at(w):  # The point a step tries (its last layer refitted if refit) and its residual.
    if not refit:
      return w, residual(w)
    refitted, out = refit_last(unravel(w), coords, target, method, refit)
    return ravel_pytree(refitted)[0], (out - target).ravel()

  def step(_, carry):
    w, lam, r = carry  # r: the residual at w, carried from the step that accepted w.
    # Row i of jac_t: the residual's derivative in weight i (one forward-mode pass each).
    jac_t = jax.lax.map(lambda v: jax.jvp(residual, (w,), (v,))[1], jnp.eye(w.size, dtype=w.dtype),
                        batch_size=jacobian_chunk())
    curvature = jnp.matmul(jac_t, jac_t.T, precision=fourier.HIGHEST)
    grad = jnp.matmul(jac_t, r, precision=fourier.HIGHEST)
    scale = jnp.diag(jnp.diag(curvature) + EPS)
    solve = lambda lam: jnp.linalg.solve(curvature + lam * scale, grad)  # noqa: E731
    if not search:
      trial, r_trial = at(w - solve(lam))
      better = jnp.sum(r_trial ** 2) < jnp.sum(r ** 2)
      return (jnp.where(better, trial, w), jnp.where(better, lam / down, lam * up),
              jnp.where(better, r_trial, r))
    lams = lam * jnp.asarray(SEARCH_DAMPINGS, w.dtype)
    moves = jax.vmap(solve)(lams)  # (dampings, weights)
    lengths = jnp.asarray(SEARCH_LENGTHS, w.dtype)
    trials, r_trials = jax.vmap(at)((w - lengths[:, None, None] * moves).reshape(-1, w.size))  # length-major
    losses = jnp.sum(r_trials ** 2, axis=1)
    best = jnp.argmin(losses)
    better = losses[best] < jnp.sum(r ** 2)
    return (jnp.where(better, trials[best], w),
            jnp.where(better, lams[best % len(SEARCH_DAMPINGS)], lam * SEARCH_UP),
            jnp.where(better, r_trials[best], r))

  r = residual(flat)
  flat, damping, _ = jax.lax.fori_loop(0, steps, step,
                                       (flat, jnp.asarray(damping, flat.dtype), r))
  return unravel(flat), damping, jnp.mean(r ** 2)
