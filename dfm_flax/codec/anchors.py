"""The image codecs people use, as anchors at a byte budget: the best file of each that
fits, at its best ordinary settings (SETTINGS, stated wherever a result is).

  anchors.at_size(img01, max_bytes, "avif") -> {codec, level, chroma, bytes, bpp, psnr, ...}

Each codec's size grows with its level (quality, or for JPEG 2000 the inverse of the
compression ratio): the largest level whose file fits is found by bisection, once per
chroma layout, and the layout with the higher PSNR is kept.
"""
from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

from dfm_flax.data import images
from dfm_flax.errors import UserError

SETTINGS = {
    "jpeg": "Pillow's libjpeg, optimised Huffman tables, the better of 4:2:0 and 4:4:4",
    "jpeg2000": "Pillow's OpenJPEG, irreversible 9/7 wavelet and colour transform, rate control",
    "webp": "Pillow's libwebp, method 6 (slowest, smallest)",
    "avif": "Pillow's libavif (aom), speed 2, the better of 4:2:0 and 4:4:4",
    "heif": "pillow-heif's libheif (x265, HEVC intra), the better of 4:2:0 and 4:4:4",
}
CODECS = tuple(SETTINGS)
_CHROMA = {"jpeg": ("4:2:0", "4:4:4"), "avif": ("4:2:0", "4:4:4"), "heif": ("4:2:0", "4:4:4"),
           "jpeg2000": ("",), "webp": ("",)}
AVIF_SPEED = 2  # a slow effort: 0 is the slowest, 10 the fastest, Pillow's default 6


def _heif():
  try:
    import pillow_heif  # HEIF is not in Pillow itself; loaded when asked for
  except ImportError:
    raise UserError("HEIF needs pillow-heif (pip install -r requirements.txt)") from None
  pillow_heif.register_heif_opener()


def encode(arr: np.ndarray, codec: str, level: float, chroma: str = "") -> bytes:
  """The file of uint8 (H, W, C) pixels at `level` (quality 1-100; JPEG 2000: 1 / ratio)."""
  grey = arr.shape[-1] == 1
  pil = Image.fromarray(arr[..., 0] if grey else arr)
  if grey and codec in ("webp", "avif", "heif"):  # colour-only formats: three equal planes
    pil = pil.convert("RGB")
  buf = io.BytesIO()
  if codec == "jpeg":
    pil.save(buf, "JPEG", quality=int(level), optimize=True,
             **({} if grey else {"subsampling": chroma}))
  elif codec == "jpeg2000":
    pil.save(buf, "JPEG2000", quality_mode="rates", quality_layers=[1 / level], irreversible=True,
             mct=0 if grey else 1)  # mct 1: the colour transform (Pillow's default is none)
  elif codec == "webp":
    pil.save(buf, "WEBP", quality=int(level), method=6)
  elif codec == "avif":
    pil.save(buf, "AVIF", quality=int(level), speed=AVIF_SPEED, subsampling=chroma)
  elif codec == "heif":
    _heif()
    pil.save(buf, "HEIF", quality=int(level), chroma=chroma.replace(":", "")[:3])
  else:
    raise UserError(f"unknown anchor codec {codec!r}; known: {', '.join(CODECS)}")
  return buf.getvalue()


def decode(data: bytes, codec: str, channels: int) -> np.ndarray:
  """A file back to float [0, 1] (H, W, channels)."""
  if codec == "heif":
    _heif()
  with Image.open(io.BytesIO(data)) as pil:
    arr = np.asarray(pil.convert("L" if channels == 1 else "RGB"), np.float32) / 255.0
  return arr[..., None] if arr.ndim == 2 else arr


def _levels(codec: str) -> list[float]:
  """The levels bisected, smallest file first."""
  if codec == "jpeg2000":  # compression ratios 2 .. 2,000, 2% apart
    return [1 / r for r in np.geomspace(2000, 2, int(math.log(1000) / math.log(1.02)) + 1)]
  return list(range(1, 101))


def _largest_fitting(arr, codec, chroma, max_bytes) -> tuple[float, bytes] | None:
  levels = _levels(codec)
  lo, hi, best = 0, len(levels) - 1, None
  while lo <= hi:
    mid = (lo + hi) // 2
    data = encode(arr, codec, levels[mid], chroma)
    if len(data) <= max_bytes:
      best, lo = (levels[mid], data), mid + 1
    else:
      hi = mid - 1
  return best


def at_size(img01: np.ndarray, max_bytes: int, codec: str) -> dict:
  """The best file of `codec` of at most max_bytes, or {psnr: None} where none is that small."""
  arr = images.to_uint8(img01)
  reference = arr / 255.0
  h, w, c = arr.shape
  best = {"codec": codec, "level": None, "chroma": None, "bytes": None, "bpp": None,
          "psnr": None, "image": None}
  for chroma in (_CHROMA[codec] if c == 3 else ("",)):
    found = _largest_fitting(arr, codec, chroma, max_bytes)
    if found is None:
      continue
    level, data = found
    decoded = decode(data, codec, c)
    psnr = images.psnr(reference, decoded)
    if best["psnr"] is None or psnr > best["psnr"]:
      best = {"codec": codec, "level": level, "chroma": chroma or None, "bytes": len(data),
              "bpp": 8 * len(data) / (h * w), "psnr": psnr, "image": decoded}
  return best
