"""Meta-learning a starting point for Fourier nets (issue 13; first part).

The model is one Fourier Net, the compress task's net. Each step draws `meta.tasks_per_step`
square crops (colour photographs, `meta.crop` px) and adapts the net to each one with
`meta.inner_steps` steps of gradient descent on its pixels' MSE (per-layer step
`meta.inner_lr / 2^m`, as `optim.scale_by_terms`), vmapped over the crops. The outer loss:

  maml     the MSE after adaptation, differentiated through the inner steps
           (`meta.first_order`: without the inner steps' second derivatives);
  reptile  0.5 ||theta - stop_gradient(phi)||^2 averaged over the crops, whose gradient is
           theta - mean(phi): Reptile's update, taken by the shared loop's optimizer.

Everything else is the shared loop's: checkpoints, resume, logging, the guard. The learned
start is the checkpoint; `compress.py --config.init_from=RUN` starts a fit from it.
Evaluation: PSNR on held-out crops (photographs never drawn in training) after 0 and
`inner_steps` adaptation steps, from the learned start and from a random one.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dfm_flax import fourier, images, photos
from dfm_flax.errors import UserError
from dfm_flax.tasks import TaskBase
from dfm_flax.tasks.compress import _one_net


def model_from_meta(config, meta: dict, rngs: nnx.Rngs):
  return _one_net(config.model, meta["channels"], rngs)


def crops(names: list[str], size: int, count: int, seed: int) -> np.ndarray:
  """count random size x size crops, in [-1, 1], (count, size*size, 3), from the named
  colour photographs (grey ones repeated to RGB), deterministic in seed."""
  rng = np.random.default_rng(seed)
  pics = []
  for name in names:
    p = photos.pixels(name)
    p = np.repeat(p[..., None], 3, -1) if p.ndim == 2 else p[..., :3]
    if min(p.shape[:2]) < size:
      raise UserError(f"photograph {name} ({p.shape[0]}x{p.shape[1]}) is smaller than meta.crop={size}")
    pics.append(p)
  out = np.empty((count, size * size, 3), np.float32)
  for i in range(count):
    p = pics[rng.integers(len(pics))]
    y, x = rng.integers(p.shape[0] - size + 1), rng.integers(p.shape[1] - size + 1)
    out[i] = p[y:y + size, x:x + size].reshape(-1, 3) / 127.5 - 1
  return out


def _mse(params, coords, target, method):
  return jnp.mean((fourier.net_apply(params, coords, method) - target) ** 2)


def adapt(params, coords, target, steps: int, lrs, method: str, first_order: bool):
  """`steps` steps of per-layer gradient descent from params on one crop."""
  grad = jax.grad(_mse)
  for _ in range(steps):
    g = grad(params, coords, target, method)
    if first_order:
      g = jax.lax.stop_gradient(g)
    params = [(a - lr * ga, b - lr * gb) for (a, b), (ga, gb), lr in zip(params, g, lrs)]
  return params


class Task(TaskBase):
  def __init__(self, config):
    self.config = config
    mc = config.meta
    if mc.algorithm not in ("maml", "reptile"):
      raise UserError(f"unknown meta.algorithm {mc.algorithm!r}; use maml or reptile")
    train_names = [n for n in mc.photos.split(",") if n]
    held_out = [n for n in mc.held_out.split(",") if n]
    if set(train_names) & set(held_out):
      raise UserError(f"meta.photos and meta.held_out share {sorted(set(train_names) & set(held_out))}")
    self.pool = jnp.asarray(crops(train_names, mc.crop, mc.pool, config.seed))
    self.held_out = jnp.asarray(crops(held_out, mc.crop, mc.eval_crops, config.seed + 1))
    self.coords = jnp.asarray(images.pixel_grid(mc.crop, mc.crop, tuple(config.model.coord_range)))
    dims = fourier.layer_dims(config.model.width, config.model.depth, 3)
    self.lrs = [mc.inner_lr / 2**m for m, _ in dims]
    self._draw = jax.jit(lambda key: jax.random.choice(key, len(self.pool), (mc.tasks_per_step,)))

  def meta(self) -> dict:
    return {"channels": 3, "image_shape": [self.config.meta.crop, self.config.meta.crop, 3]}

  def build_model(self, rngs: nnx.Rngs):
    return model_from_meta(self.config, self.meta(), rngs)

  def batch_rows(self) -> int:
    return self.config.meta.tasks_per_step

  def batch(self, step: int, rows=None):
    idx = self._draw(jax.random.fold_in(jax.random.key(self.config.seed), step))
    target = self.pool[idx]
    return {"target": target if rows is None else target[rows[0]:rows[1]]}

  def _adapt_all(self, params, targets, steps):
    mc, method = self.config.meta, self.config.model.method
    return jax.vmap(lambda t: adapt(params, self.coords, t, steps, self.lrs, method,
                                    mc.first_order))(targets)

  def loss(self, model, batch):
    mc, method = self.config.meta, self.config.model.method
    theta = model.params_list()
    targets = batch["target"]
    phis = self._adapt_all(theta, targets, mc.inner_steps)
    after = jax.vmap(lambda p, t: _mse(p, self.coords, t, method))(phis, targets)
    before = jax.vmap(lambda t: _mse(theta, self.coords, t, method))(targets)
    if mc.algorithm == "maml":
      loss = jnp.mean(after)
    else:  # Reptile: the gradient of this loss is theta - mean(phi).
      mean_phi = [(jnp.mean(pa, 0), jnp.mean(pb, 0)) for pa, pb in phis]
      loss = sum(0.5 * jnp.sum((w - jax.lax.stop_gradient(m)) ** 2)
                 for (a, b), (ma, mb) in zip(theta, mean_phi) for w, m in ((a, ma), (b, mb)))
    # MSE on [-1, 1] -> PSNR of [0, 1] images: 10 log10(4 / mse).
    return loss, {"mse_before": jnp.mean(before), "mse_after": jnp.mean(after),
                  "psnr_after": jnp.mean(10 * jnp.log10(4.0 / after))}

  def evaluate(self, model, workdir: str) -> dict:
    """PSNR on held-out crops after 0 and inner_steps steps, learned vs random start."""
    mc, method = self.config.meta, self.config.model.method
    random_net = model_from_meta(self.config, self.meta(), nnx.Rngs(self.config.seed + 1000))

    def psnr_after(params, steps):
      phis = self._adapt_all(params, self.held_out, steps)
      mse = jax.vmap(lambda p, t: _mse(p, self.coords, t, method))(phis, self.held_out)
      return float(jnp.mean(10 * jnp.log10(4.0 / mse)))

    metrics = {"held_out": mc.held_out, "eval_crops": mc.eval_crops, "crop": mc.crop,
               "inner_steps": mc.inner_steps}
    for name, net in (("learned", model), ("random", random_net)):
      for steps in sorted({0, mc.inner_steps}):
        metrics[f"psnr_{name}_{steps}_steps"] = psnr_after(net.params_list(), steps)
    print(f"held-out crops, PSNR after {mc.inner_steps} steps: learned start "
             f"{metrics[f'psnr_learned_{mc.inner_steps}_steps']:.2f} dB, random start "
             f"{metrics[f'psnr_random_{mc.inner_steps}_steps']:.2f} dB", flush=True)
    return metrics
