"""Small images to .dfm files in a few Levenberg-Marquardt steps from a learned start
(a meta-learning run), coded as the difference from it: no training run, no fine-tune."""
from __future__ import annotations

import time

import jax
import numpy as np

from dfm_flax.codec import encoding, fileformat, sizes
from dfm_flax.data import images
from dfm_flax.errors import UserError
from dfm_flax.loop.restore import load_start, saved_config
from dfm_flax.nets import fourier, levenberg
from dfm_flax.tasks import meta_learning


def encode_lm(image, out: str, start: str, steps: int, bits: int, coder: str) -> dict:
  """Fit `image` from the start in run `start` with `steps` Levenberg-Marquardt steps that
  search (levenberg.fit's search, the start's meta.lm_damping) and code the fit as the
  difference from the start: no training run and no fine-tune. Two fits are made, with and
  without the last-layer refit (refit=levenberg.REFIT), and the file that decodes closer to
  the image kept: the refit's fits are better before coding but move the last layer far
  from the start, which costs at low bit depths (docs/meta_learning.md). For images of the start's crop size and nets small enough
  for LM; figures of the decoded file, "refit": whether the kept fit refitted, and
  "other": the PSNR and bytes of the file not kept."""
  net, params = load_start(start)
  h, w, c = image.shape
  if [a.shape for a, _ in params] != fourier.param_shapes(net.width, net.depth, c):
    raise UserError(f"the start in {start} is not a net for {c}-channel images like this one")
  levenberg.check_size(net.width, net.depth, c, h * w)
  sizes.check_not_too_small(image.shape, sum(a.size + b.size for a, b in params), bits)
  damping = meta_learning.lm_settings(saved_config(start).get("meta"))["damping"]
  coords = images.pixel_grid(h, w, tuple(net.coord_range))
  target = image.reshape(-1, c).astype(np.float32) * 2 - 1  # the nets' [-1, 1] pixels
  tic = time.perf_counter()
  coded = {}
  for refit in (levenberg.REFIT, 0):
    fit = jax.jit(lambda p, t, refit=refit: levenberg.fit(
        p, coords, t, steps, net.method, damping, 1.0, search=True, refit=refit)[0])
    fitted = [(np.asarray(a), np.asarray(b)) for a, b in fit(params, target)]
    data = fileformat.encode(fitted, image.shape, net.width, net.depth, tuple(net.coord_range),
                             net.method, bits, coder, params)
    coded[refit] = (-encoding.decoded_psnr(data, image, net, params)[0], len(data), data)
  refit = min(coded, key=lambda k: coded[k][:2])  # the closer file; equal: the smaller
  other = next(v for k, v in coded.items() if k != refit)
  return {**encoding.write_measured(coded[refit][2], image, net, out, params, time.perf_counter() - tic),
          "refit": bool(refit), "other": {"psnr": -other[0], "bytes": other[1]}}
