"""Meta-learning a starting point for Fourier nets (docs/meta_learning.md).

The model is one Fourier Net, the compress task's net. Each step draws `meta.tasks_per_step`
square crops (`meta.crop` px) of the training images and adapts the net to each one with
`meta.inner_steps` steps on its pixels' MSE, vmapped over the crops: gradient descent
(`meta.inner_optimizer=sgd`; per-layer step `meta.inner_lr / 2^m`, as
`optim.scale_by_terms`) or Levenberg-Marquardt (`lm`; dfm_flax/nets/levenberg.py, damping
`meta.lm_damping` divided by `meta.lm_down` after each step that lowers the loss; with
`meta.lm_search` each step keeps the best of several dampings and lengths, with
`meta.lm_refit` n each point it tries has its last layer refitted by n Gauss-Newton
iterations). The outer loss:

  maml     the MSE after adaptation, differentiated through the inner steps
           (`meta.first_order`: without the inner steps' second derivatives);
  reptile  0.5 ||theta - stop_gradient(phi)||^2 averaged over the crops, whose gradient is
           theta - mean(phi): Reptile's update, taken by the shared loop's optimizer.

The images (`meta.source`):

  photos   the built-in photographs `meta.photos` (colour; grey ones repeated), scored on
           crops of the photographs `meta.held_out`, which training never draws;
  data     any source the suite reads, as `config.data` (a folder of photographs of any
           sizes, MNIST digits, CIFAR, TFDS, .npz): images larger than the crop are cut
           into random crops; the last `meta.held_out_last` images are never drawn in
           training and score it.

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

from dfm_flax.data import datasets, images, photos
from dfm_flax.errors import UserError
from dfm_flax.nets import fourier, levenberg
from dfm_flax.tasks import TaskBase, starts
from dfm_flax.tasks.compress import one_net


def model_from_info(config, info: dict, rngs: nnx.Rngs):
  return one_net(config.model, info["channels"], rngs)


def trained_on(meta_cfg, names: str) -> list[str]:
  """Those of the built-in photographs `names` (comma-separated) whose pixels the run
  trains on (meta.photos; coffee is coffee_full's, cat is chelsea)."""
  return photos.shared(photo_names(names), photo_names(meta_cfg.photos))


def photo_names(text: str) -> list[str]:
  """The names of a comma-separated list (meta.photos, meta.held_out)."""
  return [n for n in text.split(",") if n]


def data_images(config) -> tuple[list[np.ndarray], list[np.ndarray]]:
  """meta.source=data: config.data's images, split into (training, held out), with one
  channel count (grey repeated when grey and colour mix)."""
  pics, description = datasets.image_list(config.data)
  if len({p.shape[2] for p in pics}) > 1:
    pics = [np.repeat(p, 3, -1) if p.shape[2] == 1 else p for p in pics]
  k = config.meta.held_out_last
  if not 0 < k < len(pics):
    raise UserError(f"meta.held_out_last={k} must be between 1 and {len(pics) - 1}: "
                    f"{description} has {len(pics)} images")
  return pics[:-k], pics[-k:]


def _flat(pixels: np.ndarray) -> np.ndarray:
  """(count, size, size, C) in [0, 1] -> (count, size*size, C) in [-1, 1]."""
  return pixels.reshape(len(pixels), -1, pixels.shape[-1]).astype(np.float32) * 2 - 1


def meta_crops(config, count: int, seed: int, held_out: bool, split=None) -> np.ndarray:
  """count crops, (count, crop*crop, C) in [-1, 1], of the training images or of those
  training never draws (held_out: the evaluation's, the benchmark's). split: data_images'
  result when already read."""
  mc = config.meta
  if mc.source == "photos":
    names = photo_names(mc.held_out if held_out else mc.photos)
    return _flat(datasets.photo_crops(names, count, mc.crop, seed, mc.scale, pool=True)[0] / 255.0)
  pics = (split or data_images(config))[1 if held_out else 0]
  return _flat(datasets.random_crops(pics, count, mc.crop, seed, mc.scale, pool=True)[0])


def psnr(mse):
  """MSE of [-1, 1] pixels -> PSNR of the [0, 1] image."""
  return 10 * jnp.log10(4.0 / mse)


def mse(params, coords, target, method):
  return jnp.mean((fourier.net_apply(params, coords, method) - target) ** 2)


def adapt(params, coords, target, steps: int, lrs, method: str, first_order: bool):
  """`steps` (>= 1) steps of per-layer gradient descent from params on one crop; returns
  the adapted params and the loss at params (the first step computes it anyway)."""
  value_and_grad = jax.value_and_grad(mse)
  losses = []
  for _ in range(steps):
    loss, g = value_and_grad(params, coords, target, method)
    losses.append(loss)
    if first_order:
      g = jax.lax.stop_gradient(g)
    params = [(a - lr * ga, b - lr * gb) for (a, b), (ga, gb), lr in zip(params, g, lrs)]
  return params, losses[0]


# The first LM step's damping (times each weight's own curvature), divided by LM_DOWN after
# each step that lowers the loss: experiments/meta.py's values, and those of fits from a
# start that has no LM settings of its own (a compress run).
LM_DAMPING, LM_DOWN = 0.1, 1.5


def lm_settings(meta_cfg) -> dict:
  """A run's Levenberg-Marquardt settings (damping, down, search, refit), for its inner loop
  and for the fits that start from it; a run without meta settings gets the defaults."""
  get = lambda key, value: meta_cfg.get(key, value) if meta_cfg else value  # noqa: E731
  return {"damping": get("lm_damping", LM_DAMPING), "down": get("lm_down", LM_DOWN),
          "search": bool(get("lm_search", False)), "refit": int(get("lm_refit", 0))}


def adapt_lm(params, coords, target, steps: int, damping: float, down: float, method: str,
             first_order: bool, search: bool = False, refit: int = 0):
  """`steps` Levenberg-Marquardt steps (dfm_flax/nets/levenberg.py; search, refit: its options)
  from params on one crop; returns the adapted params and the loss at params. first_order:
  the adapted params depend on params as params plus a constant (no derivative through the
  solves)."""
  phi, _, before = levenberg.fit(params, coords, target, steps, method, damping, down,
                                 search=search, refit=refit)
  if first_order:
    phi = jax.tree.map(lambda p, f: p + jax.lax.stop_gradient(f - p), params, phi)
  return phi, before


class Task(TaskBase):
  def __init__(self, config):
    self.config = config
    mc = config.meta
    if mc.algorithm not in ("maml", "reptile"):
      raise UserError(f"unknown meta.algorithm {mc.algorithm!r}; use maml or reptile")
    if mc.inner_steps < 1:
      raise UserError(f"meta.inner_steps must be at least 1, got {mc.inner_steps}")
    if mc.inner_optimizer not in ("sgd", "lm"):
      raise UserError(f"unknown meta.inner_optimizer {mc.inner_optimizer!r}; use sgd or lm")
    self.lm = lm_settings(mc)
    if self.lm["refit"] < 0:
      raise UserError(f"meta.lm_refit counts Gauss-Newton iterations: 0 or more, got {mc.lm_refit}")
    if mc.source not in ("photos", "data"):
      raise UserError(f"unknown meta.source {mc.source!r}; use photos or data")
    if mc.source == "photos" and (shared := trained_on(mc, mc.held_out)):
      raise UserError(f"meta.photos and meta.held_out share {shared}")
    split = data_images(config) if mc.source == "data" else None
    if mc.inner_optimizer == "lm":  # Before any crop is cut. Built-in photographs: colour.
      channels = split[0][0].shape[-1] if split else 3
      levenberg.check_size(config.model.width, config.model.depth, channels, mc.crop**2)
      if not config.get("init_from", ""):
        print("note: Levenberg-Marquardt steps barely move a random start's tiny weights; "
              "learn a start for gradient steps first (meta.py:small) and go on from it "
              "with --config.init_from=RUN", flush=True)
    self.pool = jnp.asarray(meta_crops(config, mc.pool, config.seed, False, split))
    self.held_out = jnp.asarray(meta_crops(config, mc.eval_crops, config.seed + 1, True, split))
    self.channels = int(self.pool.shape[-1])
    self.coords = jnp.asarray(images.pixel_grid(mc.crop, mc.crop, tuple(config.model.coord_range)))
    dims = fourier.layer_dims(config.model.width, config.model.depth, self.channels)
    self.lrs = [mc.inner_lr / 2**m for m, _ in dims]
    self._draw = jax.jit(lambda key: jax.random.choice(key, len(self.pool), (mc.tasks_per_step,)))
    probe = self.pool[:self.PROBE_CROPS]  # What the guard judges (guarded_loss).
    self._probe_mse = jax.jit(
        lambda params: jnp.mean(self._after(self._adapt_all(params, probe)[0], probe)))

  def checkpoint_info(self) -> dict:
    crop = self.config.meta.crop
    return {"channels": self.channels, "image_shape": [crop, crop, self.channels]}

  def build_model(self, rngs: nnx.Rngs):
    return model_from_info(self.config, self.checkpoint_info(), rngs)

  def batch_rows(self) -> int:
    return self.config.meta.tasks_per_step

  def start_notes(self, source: str) -> list[str]:
    crop = self.config.meta.crop  # An LM run fits an LM start as it was meant.
    return starts.notes(source, [(crop, crop)], self.config.meta.inner_optimizer != "lm")

  def batch(self, step: int, rows=None):
    idx = self._draw(jax.random.fold_in(jax.random.key(self.config.seed), step))
    target = self.pool[idx]
    return {"target": target if rows is None else target[rows[0]:rows[1]]}

  def _adapt_all(self, params, targets):
    """Each crop's adapted params and its loss at params (vmapped over the crops)."""
    mc, method = self.config.meta, self.config.model.method
    if mc.inner_optimizer == "lm":
      lm = self.lm
      return jax.vmap(lambda t: adapt_lm(params, self.coords, t, mc.inner_steps, lm["damping"],
                                         lm["down"], method, mc.first_order,
                                         lm["search"], lm["refit"]))(targets)
    return jax.vmap(lambda t: adapt(params, self.coords, t, mc.inner_steps, self.lrs, method,
                                    mc.first_order))(targets)

  def _after(self, phis, targets):
    method = self.config.model.method
    return jax.vmap(lambda p, t: mse(p, self.coords, t, method))(phis, targets)

  def loss(self, model, batch):
    theta = model.params_list()
    targets = batch["target"]
    phis, before = self._adapt_all(theta, targets)
    after = self._after(phis, targets)
    if self.config.meta.algorithm == "maml":
      loss = jnp.mean(after)
    else:  # Reptile: the gradient of this loss is theta - mean(phi).
      mean_phi = [(jnp.mean(pa, 0), jnp.mean(pb, 0)) for pa, pb in phis]
      loss = sum(0.5 * jnp.sum((w - jax.lax.stop_gradient(m)) ** 2)
                 for (a, b), (ma, mb) in zip(theta, mean_phi) for w, m in ((a, ma), (b, mb)))
    return loss, {"mse_before": jnp.mean(before), "mse_after": jnp.mean(after),
                  "psnr_after": jnp.mean(psnr(after))}

  # The guard judges the start on the same crops every time (the pool's first PROBE_CROPS):
  # Reptile's loss and the adapted MSE swing far more than the guard's 4x between the
  # batches of one healthy start. Only the ratio rule applies (no reference_loss): the probe
  # crops' mean colours are a strong baseline for a few inner steps, not a broken net's level.
  PROBE_CROPS = 16

  def guarded_loss(self, loss: float, aux: dict, model) -> float:
    """The adapted MSE of the probe crops (the same ones at every log step)."""
    return float(self._probe_mse(model.params_list()))

  def evaluate(self, model, workdir: str) -> dict:
    """PSNR on held-out crops after 0 and inner_steps steps, learned vs random start."""
    mc = self.config.meta
    random_net = model_from_info(self.config, self.checkpoint_info(), nnx.Rngs(self.config.seed + 1000))
    held_out = mc.held_out if mc.source == "photos" else f"last {mc.held_out_last} images"
    metrics = {"held_out": held_out, "eval_crops": mc.eval_crops, "crop": mc.crop,
               "inner_steps": mc.inner_steps}
    for name, net in (("learned", model), ("random", random_net)):
      phis, before = self._adapt_all(net.params_list(), self.held_out)
      metrics[f"psnr_{name}_0_steps"] = float(jnp.mean(psnr(before)))
      metrics[f"psnr_{name}_{mc.inner_steps}_steps"] = float(
          jnp.mean(psnr(self._after(phis, self.held_out))))
    print(f"held-out crops, PSNR after {mc.inner_steps} steps: learned start "
          f"{metrics[f'psnr_learned_{mc.inner_steps}_steps']:.2f} dB, random start "
          f"{metrics[f'psnr_random_{mc.inner_steps}_steps']:.2f} dB", flush=True)
    return metrics
