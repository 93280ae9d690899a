"""Compression: one Fourier Net fitted to one image's (position -> pixel) pairs by MSE.

The weights are the compressed image: bytes = num_params * 4 (fp32).
Evaluation compares the 8-bit reconstruction with the original and with the
largest-quality JPEG no larger than the network (thesis Fig. 5.3).
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import psutil
from flax import nnx

from dfm_flax.data import images
from dfm_flax.errors import UserError
from dfm_flax.evaluation import compress_report, figures
from dfm_flax.loop import logs, restore
from dfm_flax.nets import fourier
from dfm_flax.nets.siren import Siren
from dfm_flax.tasks import TaskBase, starts


def init_variances(model_cfg, channels: int) -> list[float]:
  """Per-layer init variance: constant (thesis) or init_variance / 2^m ('fan_in'); the
  first layer's is first_init_variance instead when that is set (> 0).

  'fan_in' keeps each layer's output variance at init_variance whatever the width,
  since a layer sums 2^m unit-power cos/sin terms. A first layer of large weights puts
  the second layer's features at high frequencies from the start: the codec's last
  candidate for texture that a small start never leaves its flat image on
  (encoding.fit_for_bpp).
  """
  dims = fourier.layer_dims(model_cfg.width, model_cfg.depth, channels)
  if model_cfg.init == "constant":
    variances = [model_cfg.init_variance] * len(dims)
  elif model_cfg.init == "fan_in":
    variances = [model_cfg.init_variance / 2**m for m, _ in dims]
  else:
    raise UserError(f"unknown model.init {model_cfg.init!r}; use constant or fan_in")
  first = model_cfg.get("first_init_variance", 0.0)
  if first < 0:
    raise UserError(f"model.first_init_variance must be >= 0 (0: as the other layers), got {first}")
  return [first or variances[0]] + variances[1:]


def image_paths(config) -> list[str]:
  """config.image: one path, several joined by commas (fitted at once), or '' (built-in)."""
  return [p.strip() for p in config.image.split(",") if p.strip()] if config.image else []


def model_from_info(config, info: dict, rngs: nnx.Rngs):
  """One net, or (info["image_shapes"] of several images) a stack of nets, net i seeded
  seed + i: each trains exactly as it would alone with --config.seed=seed+i."""
  m, shapes = config.model, info.get("image_shapes") or [info["image_shape"]]
  if len(shapes) == 1:
    return one_net(m, shapes[0][2], rngs)
  if m.get("kind", "fourier") != "fourier":
    raise UserError("only Fourier nets can fit several images at once; give one image")
  return fourier.FourierNet.stack(
      [one_net(m, shapes[0][2], nnx.Rngs(config.seed + i)) for i in range(len(shapes))])


def one_net(m, channels: int, rngs: nnx.Rngs):
  """The net of model config m (Fourier Net or SIREN); the meta task learns its start."""
  if m.get("kind", "fourier") == "siren":
    return Siren(m.siren_hidden, m.siren_layers, channels, w0=m.siren_w0, rngs=rngs)
  return fourier.FourierNet(m.width, m.depth, channels, init_variance=init_variances(m, channels),
                            method=m.method, quant_bits=m.get("quant_bits", 0),
                            quant_steps=m.get("quant_steps", ()),
                            quant_start=bool(m.get("quant_start", "")), rngs=rngs)


def model_function(model, model_cfg, index: int | None = None):
  """coords -> pixels in [-1, 1]: the net (net `index` of a stack), or SIREN clipped like
  the 8-bit image."""
  if model_cfg.get("kind", "fourier") == "siren":
    return lambda xy: jnp.clip(model(xy), -1, 1)
  params = model.net_params(index)
  return lambda xy: fourier.render_apply(params, xy, model.method)


class Task(TaskBase):
  """Fit one image, or several at once (one net each, vmapped). Batches are random
  pixels, drawn from (seed + i, step) for image i."""

  def __init__(self, config):
    self.config = config
    paths = image_paths(config)
    if paths:
      self.images = [images.load_image(p) for p in paths]
      self.image_names = [os.path.basename(p) for p in paths]
    else:
      self.images = [images.default_image()]
      self.image_names = ["coffee (skimage, centre 400x400)"]
    self.shapes = [list(im.shape) for im in self.images]
    self.channels = self.images[0].shape[2]
    if any(im.shape[2] != self.channels for im in self.images):
      raise UserError("images fitted at once need the same number of channels, got "
                      + ", ".join(f"{n} ({s[2]})" for n, s in zip(self.image_names, self.shapes)))
    m = config.model
    # A step sees batch_size pixels of every image; evaluation renders one image at a time.
    h, w, _ = self.shapes[0]
    points = max(len(self.images) * min(config.train.batch_size, h * w), config.train.eval_chunk)
    fourier.check_fits_memory(m.width, m.depth, self.channels, points,
                              psutil.virtual_memory().available)
    grids = [images.pixel_grid(h, w, tuple(m.coord_range)) for h, w, _ in self.shapes]
    targets = [im.reshape(-1, self.channels) * 2 - 1 for im in self.images]
    self.num_pixels = np.array([len(g) for g in grids])
    # Images of different sizes are padded to the largest; sampling never reads the padding.
    self.coords = jnp.asarray(_stack_padded(grids))
    self.targets = jnp.asarray(_stack_padded(targets))
    # The pixels are arguments, not a closure: a jitted closure would compile the whole
    # image into the program as a constant.
    self._batch = jax.jit(self._make_batch, static_argnums=(3,))

  # --- the task interface -------------------------------------------------
  def checkpoint_info(self) -> dict:
    if len(self.images) == 1:
      return {"image_shape": self.shapes[0]}
    return {"image_shape": self.shapes[0], "image_shapes": self.shapes}

  def build_model(self, rngs: nnx.Rngs) -> fourier.FourierNet:
    model = model_from_info(self.config, self.checkpoint_info(), rngs)
    if self.config.model.get("quant_start", ""):  # A checkpoint holds it too; a new run reads it.
      model.set_start(restore.load_start(self.config.model.quant_start)[1])
    return model

  def start_notes(self, source: str) -> list[str]:
    return starts.notes(source, self.shapes)

  def lr_multiplier(self, model):
    """With optim.scale_by_terms (Fourier nets only), layer l learns at optim.lr / 2^m_l.

    A layer's output is a sum of 2^m cos/sin terms and Adam moves every
    coefficient by about lr per step, so the layer's output moves by up to
    2^m * lr: one global lr is 64x too slow for the first layer (4 terms) of a
    width-8 net when it is right for the middle ones (256 terms), and too fast for
    the middle ones when right for the first. Scaling by 1/2^m equalises the
    step each layer takes in function space.

    With optim.depth_ref > 0, a net deeper than depth_ref also learns at
    depth_ref / depth of that: each layer's step moves the output, so a net's step in
    function space grows with its depth, and deep nets collapsed where shallower ones
    did not (docs/recipe.md: not in the recipe).
    """
    if (not self.config.optim.get("scale_by_terms", False)
        or self.config.model.get("kind", "fourier") != "fourier"):
      return None
    depth, ref = self.config.model.depth, self.config.optim.get("depth_ref", 0)
    dims = fourier.layer_dims(self.config.model.width, depth, self.channels)
    deep = min(1.0, ref / depth) if ref > 0 else 1.0

    def multiplier(path):
      layer = next(int(k.key) for k in path if isinstance(getattr(k, "key", None), int))
      return deep / 2**dims[layer][0]
    return multiplier

  def reference_loss(self) -> float:
    """The loss of the flat mean-colour image (what a collapsed net outputs): the sum
    over images of each image's per-channel variance on the [-1, 1] scale."""
    return float(sum(np.mean((2 * im - 1 - np.mean(2 * im - 1, axis=(0, 1))) ** 2)
                     for im in self.images))

  def _full_image(self) -> bool:
    return len(self.images) == 1 and self.config.train.batch_size >= self.num_pixels[0]

  def batch_rows(self) -> int:
    return int(self.num_pixels[0]) if self._full_image() else self.config.train.batch_size

  def _make_batch(self, all_coords, all_targets, step, rows):
    """(coords, targets): (pixels, 2) and (pixels, channels) for one image; for n
    images (pixels, n, 2) and (pixels, n, channels), pixels first so that the mesh
    splits pixels, whatever n is. Only rows[0]:rows[1] of the pixels are gathered."""
    size, n = self.config.train.batch_size, len(self.images)
    if self._full_image():  # Full-image steps: no sampling needed.
      return all_coords[0, rows[0]:rows[1]], all_targets[0, rows[0]:rows[1]]
    idx = jnp.stack([
        jax.random.randint(jax.random.fold_in(jax.random.key(self.config.seed + i + 1), step),
                           (size,), 0, int(self.num_pixels[i]))[rows[0]:rows[1]]
        for i in range(n)])
    coords = jnp.take_along_axis(all_coords, idx[..., None], axis=1)
    targets = jnp.take_along_axis(all_targets, idx[..., None], axis=1)
    if n == 1:
      return coords[0], targets[0]
    return jnp.swapaxes(coords, 0, 1), jnp.swapaxes(targets, 0, 1)

  def batch(self, step: int, rows=None):
    return self._batch(self.coords, self.targets, step, rows or (0, self.batch_rows()))

  @staticmethod
  def loss(model, batch):
    coords, targets = batch
    if not getattr(model, "count", 0):
      err = jnp.mean((model(coords) - targets) ** 2)
      # Targets span [-1, 1]: the MSE on the [0, 1] scale is err / 4.
      return err, {"psnr": -10 * jnp.log10(err / 4)}
    pred = model(jnp.swapaxes(coords, 0, 1))
    err = jnp.mean((pred - jnp.swapaxes(targets, 0, 1)) ** 2, axis=(1, 2))
    # A sum, not a mean: each net gets exactly the gradient it would get alone.
    return jnp.sum(err), {"psnr": jnp.mean(-10 * jnp.log10(err / 4))}

  def evaluate(self, model, workdir: str) -> dict:
    if len(self.images) == 1:
      return self._evaluate_one(model, None, workdir)
    reports = [self._evaluate_one(model, i, os.path.join(workdir, f"image{i}"))
               for i in range(len(self.images))]
    figures.training_curves(logs.read_history(workdir), ["loss", "psnr"],
                            os.path.join(workdir, "training.png"))
    mean = {k: float(np.mean([r[k] for r in reports]))
            for k in ("psnr", "ssim", "mse", "bytes", "bpp")}
    return {"num_images": len(reports), "model_width": self.config.model.width,
            "model_depth": self.config.model.depth, **mean,
            "jpeg_psnr": float(np.mean([r["jpeg"]["psnr"] for r in reports])),
            "near_flat": any(r["near_flat"] for r in reports), "images": reports}

  def result_warning(self, metrics: dict) -> str:
    if not metrics.get("near_flat"):
      return ""
    return (f"warning: this fit ended within {images.FLAT_MARGIN_DB:g} dB of its image's flat "
            f"mean colour (metrics.json: near_flat, flat_psnr): it learned next to nothing; fine "
            f"texture and low-contrast images can leave the net at its flat start. Try another "
            f"seed, a wider or shallower net, a larger train.batch_size, or for fine texture "
            f"--config.model.first_init_variance=1.0 (the codec's --bpp tries a wider net and "
            f"that first layer itself)")

  def _evaluate_one(self, model, index, workdir: str) -> dict:
    i = index or 0
    h, w, _ = self.shapes[i]
    os.makedirs(workdir, exist_ok=True)
    recon = images.render_fn(jax.jit(model_function(model, self.config.model, index)), h, w,
                             tuple(self.config.model.coord_range), self.config.train.eval_chunk)
    report = compress_report.report(self.images[i], recon, self.config, workdir,
                                    self.image_names[i], _num_weights(model))
    # A net that never left its flat start (fine texture; a low-contrast photograph at a
    # small batch) reports like any other fit: say so in metrics.json and one line.
    flat = images.flat_psnr(self.images[i])
    report.update(flat_psnr=round(flat, 2),
                  near_flat=bool(report["psnr"] < flat + images.FLAT_MARGIN_DB))
    return report


def _num_weights(model) -> int:
  """Weights of one net (of one of the stacked nets)."""
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  return n // max(getattr(model, "count", 0), 1)


def _stack_padded(arrays: list) -> np.ndarray:
  """(n, max rows, ...) from arrays of different row counts, zero-padded."""
  out = np.zeros((len(arrays), max(len(a) for a in arrays)) + arrays[0].shape[1:], np.float32)
  for i, a in enumerate(arrays):
    out[i, :len(a)] = a
  return out
