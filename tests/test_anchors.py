"""The anchor codecs at a byte budget: every file fits, it is the largest level that fits,
and its PSNR is the decoded file's (checked by decoding it again with Pillow alone)."""
import io

import numpy as np
import pytest
from PIL import Image

from dfm_flax.codec import anchors
from dfm_flax.data import images
from dfm_flax.errors import UserError


def photo(size=64, grey=False):
  rng = np.random.default_rng(0)
  y, x = np.mgrid[:size, :size] / size
  base = np.stack([np.sin(6 * x + 2 * y), np.cos(5 * y), np.sin(3 * x * y + 1)], -1)
  img = np.clip(0.5 + 0.4 * base + 0.05 * rng.normal(size=base.shape), 0, 1)
  return img[..., :1] if grey else img


@pytest.mark.parametrize("codec", anchors.CODECS)
def test_the_file_fits_is_the_largest_that_fits_and_scores_its_pixels(codec):
  img = photo()
  budget = 1500
  r = anchors.at_size(img, budget, codec)
  assert r["bytes"] <= budget
  arr = images.to_uint8(img)
  data = anchors.encode(arr, codec, r["level"], r["chroma"] or "")
  assert len(data) == r["bytes"]
  levels = anchors._levels(codec)
  nxt = levels.index(r["level"]) + 1
  if nxt < len(levels):  # one level up no longer fits
    assert len(anchors.encode(arr, codec, levels[nxt], r["chroma"] or "")) > budget
  if codec == "heif":
    anchors._heif()
  with Image.open(io.BytesIO(data)) as pil:
    decoded = np.asarray(pil.convert("RGB"), np.float64) / 255
  mse = np.mean((decoded - arr / 255.0) ** 2)
  assert r["psnr"] == pytest.approx(10 * np.log10(1 / mse), abs=1e-6)
  more = anchors.at_size(img, 3 * budget, codec)
  assert more["psnr"] > r["psnr"] and more["bytes"] <= 3 * budget


@pytest.mark.parametrize("codec", ["jpeg", "webp", "jpeg2000"])
def test_grey_photographs_and_budgets_too_small(codec):
  img = photo(grey=True)
  r = anchors.at_size(img, 2000, codec)
  assert r["image"].shape == img.shape and r["bytes"] <= 2000
  assert anchors.at_size(img, 10, codec)["psnr"] is None  # no file is 10 bytes


def test_unknown_codec_is_refused():
  with pytest.raises(UserError, match="unknown anchor codec 'bpg'"):
    anchors.encode(images.to_uint8(photo()), "bpg", 50)
