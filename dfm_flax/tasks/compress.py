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

from dfm_flax import figures, fourier, images, logs
from dfm_flax.errors import UserError
from dfm_flax.tasks import TaskBase


def init_variances(model_cfg, channels: int) -> list[float]:
  """Per-layer init variance: constant (thesis) or init_variance / 2^m ('fan_in').

  'fan_in' keeps each layer's output variance at init_variance whatever the width,
  since a layer sums 2^m unit-power cos/sin terms.
  """
  dims = fourier.layer_dims(model_cfg.width, model_cfg.depth, channels)
  if model_cfg.init == "constant":
    return [model_cfg.init_variance] * len(dims)
  if model_cfg.init == "fan_in":
    return [model_cfg.init_variance / 2**m for m, _ in dims]
  raise UserError(f"unknown model.init {model_cfg.init!r}; use constant or fan_in")


def model_from_meta(config, meta: dict, rngs: nnx.Rngs):
  m, channels = config.model, meta["image_shape"][2]
  if m.get("kind", "fourier") == "siren":
    from dfm_flax.siren import Siren
    return Siren(m.siren_hidden, m.siren_layers, channels, w0=m.siren_w0, rngs=rngs)
  return fourier.FourierNet(m.width, m.depth, channels, init_variance=init_variances(m, channels),
                            method=m.method, quant_bits=m.get("quant_bits", 0), rngs=rngs)


def model_function(model, model_cfg):
  """coords -> pixels in [-1, 1]: the net itself, or SIREN clipped like the 8-bit image."""
  if model_cfg.get("kind", "fourier") == "siren":
    return lambda xy: jnp.clip(model(xy), -1, 1)
  return model


class Task(TaskBase):
  """Fit one image. Batches are random pixels, drawn from (seed, step)."""

  def __init__(self, config):
    self.config = config
    if config.image:
      self.image = images.load_image(config.image)
      self.image_name = os.path.basename(config.image)
    else:
      self.image = images.default_image()
      self.image_name = "coffee (skimage, centre 400x400)"
    self.height, self.width, self.channels = self.image.shape
    m = config.model
    points = max(min(config.train.batch_size, self.height * self.width), config.train.eval_chunk)
    fourier.check_fits_memory(m.width, m.depth, self.channels, points,
                              psutil.virtual_memory().available)
    self.coords = jnp.asarray(images.pixel_grid(self.height, self.width, tuple(m.coord_range)))
    self.targets = jnp.asarray(self.image.reshape(-1, self.channels) * 2 - 1)
    self.num_pixels = self.height * self.width
    self._batch = jax.jit(self._make_batch)

  # --- the task interface -------------------------------------------------
  def meta(self) -> dict:
    return {"image_shape": [self.height, self.width, self.channels]}

  def build_model(self, rngs: nnx.Rngs) -> fourier.FourierNet:
    return model_from_meta(self.config, self.meta(), rngs)

  def lr_multiplier(self, model):
    """With optim.scale_by_terms (Fourier nets only), layer l learns at optim.lr / 2^m_l.

    A layer's output is a sum of 2^m cos/sin terms and Adam moves every
    coefficient by about lr per step, so the layer's output moves by up to
    2^m * lr: one global lr is 64x too slow for the first layer (4 terms) of a
    width-8 net when it is right for the middle ones (256 terms), and too fast for
    the middle ones when right for the first. Scaling by 1/2^m equalises the
    step each layer takes in function space.
    """
    if (not self.config.optim.get("scale_by_terms", False)
        or self.config.model.get("kind", "fourier") != "fourier"):
      return None
    dims = fourier.layer_dims(self.config.model.width, self.config.model.depth, self.channels)

    def multiplier(path):
      layer = next(int(k.key) for k in path if isinstance(getattr(k, "key", None), int))
      return 1.0 / 2**dims[layer][0]
    return multiplier

  def _make_batch(self, step):
    size = self.config.train.batch_size
    if size >= self.num_pixels:  # Full-image steps: no sampling needed.
      return self.coords, self.targets
    key = jax.random.fold_in(jax.random.key(self.config.seed + 1), step)
    idx = jax.random.randint(key, (size,), 0, self.num_pixels)
    return self.coords[idx], self.targets[idx]

  def batch(self, step: int):
    return self._batch(step)

  @staticmethod
  def loss(model, batch):
    coords, targets = batch
    err = jnp.mean((model(coords) - targets) ** 2)
    # Targets span [-1, 1]: the MSE on the [0, 1] scale is err / 4.
    return err, {"psnr": -10 * jnp.log10(err / 4)}

  def evaluate(self, model, workdir: str) -> dict:
    recon = images.render_fn(jax.jit(model_function(model, self.config.model)), self.height,
                             self.width, tuple(self.config.model.coord_range),
                             self.config.train.eval_chunk)
    return compression_report(self.image, recon, model, self.config, workdir, self.image_name)


def compression_report(original, recon, model, config, workdir: str, image_name: str) -> dict:
  """Metrics (SPEC section 2) and figures for a fitted image."""
  h, w, c = original.shape
  ref8 = images.to_uint8(original) / 255.0
  rec8 = images.to_uint8(recon) / 255.0
  n = sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  nbytes = 4 * n
  jpeg = images.jpeg_at_size(original, nbytes)
  metrics = {
      "image": image_name, "height": h, "width": w, "channels": c,
      "model_width": config.model.width, "model_depth": config.model.depth,
      "psnr": images.psnr(ref8, rec8),
      "ssim": images.ssim(ref8, rec8),
      "mse": images.mse(ref8, rec8),
      # The thesis's "final loss": MSE of the float output on the [-1, 1] scale.
      "final_loss": 4 * images.mse(original, recon),
      "num_params": n,
      "bytes": nbytes,
      "bpp": 8 * nbytes / (h * w),
      "percent_of_raw": 100 * nbytes / (h * w * c),
      "jpeg": {k: v for k, v in jpeg.items() if k != "image"},
  }
  images.save_png(recon, os.path.join(workdir, "reconstruction.png"))
  quality = jpeg["quality"] or "1 (no JPEG is this small)"
  jpeg_title = (f"JPEG q={quality}, {jpeg['bytes'] / 1000:.1f} KB\n"
                f"PSNR {jpeg['psnr']:.2f} dB, SSIM {jpeg['ssim']:.3f}")
  figures.image_row(
      [(ref8, f"original {w}x{h}\n{h * w * c / 1000:.0f} KB raw"),
       (rec8, f"DFM {config.model.width}x{config.model.depth}, {nbytes / 1000:.1f} KB\n"
              f"PSNR {metrics['psnr']:.2f} dB, SSIM {metrics['ssim']:.3f}"),
       (jpeg["image"], jpeg_title)],
      os.path.join(workdir, "comparison.png"),
      suptitle=f"{image_name}: DFM vs JPEG at equal size ({metrics['percent_of_raw']:.1f}% of raw)")
  figures.training_curves(logs.read_history(workdir), ["loss", "psnr"],
                          os.path.join(workdir, "training.png"))
  return metrics
