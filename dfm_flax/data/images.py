"""Images in and out: loading with clear errors, pixel grids, quality metrics, JPEG.

Pixels inside the library are float32 in [0, 1] with shape (H, W, C), C = 1 or 3;
the networks see them scaled to [-1, 1].
"""
from __future__ import annotations

import io
import os
import sys

import numpy as np
from PIL import Image, UnidentifiedImageError

from dfm_flax.errors import UserError


def default_image() -> np.ndarray:
  """The built-in image: centre 400x400 crop (columns 100-499) of skimage's `coffee`."""
  import skimage.data  # Imported here: only the default image needs it.
  return skimage.data.coffee()[:, 100:500].astype(np.float32) / 255.0


def _to_float(pil: Image.Image, path: str) -> np.ndarray:
  """Convert any Pillow mode to float32 gray (H, W, 1) or RGB (H, W, 3) in [0, 1]."""
  mode = pil.mode
  if mode in ("I;16", "I;16B", "I;16L", "I"):  # 16-bit (or 32-bit int) gray.
    arr = np.asarray(pil, dtype=np.float64)
    peak = 65535.0 if arr.max() > 255 or mode.startswith("I;16") else 255.0
    return (np.clip(arr / peak, 0, 1)[..., None]).astype(np.float32)
  if mode == "F":
    arr = np.asarray(pil, dtype=np.float64)
    return np.clip(arr, 0, 1)[..., None].astype(np.float32)
  if mode in ("1", "L"):
    return (np.asarray(pil.convert("L"), np.float32) / 255.0)[..., None]
  if mode in ("LA", "RGBA", "PA") or (mode == "P" and "transparency" in pil.info):
    print(f"note: {path} has an alpha channel; it is composited onto white", file=sys.stderr)
    rgba = pil.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    pil = Image.alpha_composite(white, rgba)
  return np.asarray(pil.convert("RGB"), np.float32) / 255.0


# Pillow's guard against decompression bombs (a tiny file whose header claims a huge image):
# its default, unless DFM_MAX_IMAGE_PIXELS asks for another.
Image.MAX_IMAGE_PIXELS = int(os.environ.get("DFM_MAX_IMAGE_PIXELS", Image.MAX_IMAGE_PIXELS))


def load_image(path: str) -> np.ndarray:
  """Read a PNG/JPEG/any Pillow image as float32 (H, W, C) in [0, 1]; UserError if unreadable.

  Gray stays one channel; RGBA and palette images with transparency are composited
  onto white; 16-bit images are scaled to [0, 1].
  """
  if not os.path.exists(path):
    raise UserError(f"image not found: {path}")
  if os.path.isdir(path):
    raise UserError(f"image path is a directory, not a file: {path}")
  try:
    with Image.open(path) as pil:
      pil.load()
      arr = _to_float(pil, path)
  except Image.DecompressionBombError as e:
    raise UserError(f"image {path} is refused as a possible decompression bomb ({e}); if it "
                    f"is a real image, raise the limit with DFM_MAX_IMAGE_PIXELS=N") from None
  except UnidentifiedImageError:
    raise UserError(f"not an image file (Pillow cannot identify it): {path}") from None
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read image {path}: {e}") from None
  if arr.shape[0] < 2 or arr.shape[1] < 2:
    raise UserError(f"image {path} is {arr.shape[1]}x{arr.shape[0]}; need at least 2x2 pixels")
  return arr


def pixel_grid(height: int, width: int, coord_range=(0.0, 1.0)) -> np.ndarray:
  """(H*W, 2) pixel-centre positions (x1 = column, x2 = row), scaled into coord_range."""
  lo, hi = coord_range
  cols = lo + (np.arange(width) + 0.5) / width * (hi - lo)
  rows = lo + (np.arange(height) + 0.5) / height * (hi - lo)
  grid = np.stack(np.meshgrid(cols, rows), axis=-1)
  return grid.reshape(-1, 2).astype(np.float32)


# A fit ending less than this above its flat image (its mean colour) learned nothing: the
# codec fits another net, a compress run warns. A round figure inside a wide gap: fits
# that learn end several dB above it.
FLAT_MARGIN_DB = 1.0


def flat_psnr(image: np.ndarray) -> float:
  """PSNR (8-bit) of the image's mean colour: what a net that learned nothing shows."""
  ref = to_uint8(image) / 255
  flat = np.broadcast_to(np.mean(image, axis=(0, 1)), image.shape)
  return psnr(ref, to_uint8(flat) / 255)


def to_uint8(img01: np.ndarray) -> np.ndarray:
  """Float [0, 1] image -> uint8, rounded (what an 8-bit file stores)."""
  return np.round(np.clip(np.asarray(img01, np.float64), 0, 1) * 255).astype(np.uint8)


def save_png(img01: np.ndarray, path: str) -> None:
  arr = to_uint8(img01)
  Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def mse(a: np.ndarray, b: np.ndarray) -> float:
  return float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  """PSNR in dB for images in [0, 1] (peak 1)."""
  err = mse(a, b)
  return float("inf") if err == 0 else float(-10 * np.log10(err))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
  """Mean SSIM (dm-pix, 11x11 Gaussian window) for (H, W, C) images in [0, 1]."""
  import dm_pix  # configs import this module: jax and dm-pix load on first use
  import jax.numpy as jnp
  return float(dm_pix.ssim(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))


def jpeg_bytes(img01: np.ndarray, quality: int, fmt: str = "JPEG", optimize: bool = True) -> bytes:
  """A JPEG (or WebP) file of the image at `quality`. JPEG's optimize=True (Huffman tables
  fitted to the image: smaller files, the same pixels) is the anchor at its best ordinary
  settings; optimize=False gives Pillow's default file."""
  arr = to_uint8(img01)
  pil = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
  buf = io.BytesIO()
  pil.save(buf, format=fmt, quality=quality, **({"optimize": optimize} if fmt == "JPEG" else {}))
  return buf.getvalue()


def decode_image_bytes(data: bytes, channels: int) -> np.ndarray:
  with Image.open(io.BytesIO(data)) as pil:
    arr = np.asarray(pil, np.float32) / 255.0
  return arr[..., None] if arr.ndim == 2 else arr[..., :channels]


def jpeg_at_size(img01: np.ndarray, max_bytes: int, fmt: str = "JPEG",
                 optimize: bool = True) -> dict:
  """The largest-quality JPEG (or WebP) file (Pillow, quality 1..100) of <= max_bytes;
  JPEG with optimised Huffman tables unless optimize=False (`jpeg_bytes`).

  Returns {quality, bytes, bpp, psnr, ssim, image}; quality is None (and the
  figures describe quality 1) when even quality 1 is larger than max_bytes.
  """
  h, w = img01.shape[:2]
  # File size grows with quality: bisect (7 encodes, not 100: large images and WebP are
  # slow to encode). The file returned always fits; where size is not monotonic in
  # quality it may be a quality or two below the largest that fits.
  lo, hi = 0, 100  # Invariant: quality lo fits (0: none known), hi+1.. do not.
  while lo < hi:
    mid = (lo + hi + 1) // 2
    if len(jpeg_bytes(img01, mid, fmt, optimize)) <= max_bytes:
      lo = mid
    else:
      hi = mid - 1
  quality = lo or None
  data = jpeg_bytes(img01, quality or 1, fmt, optimize)
  decoded = decode_image_bytes(data, img01.shape[-1])
  return {
      "quality": quality,
      "bytes": len(data),
      "bpp": 8 * len(data) / (h * w),
      "psnr": psnr(to_uint8(img01) / 255.0, decoded),
      "ssim": ssim(img01, decoded),
      "image": decoded,
  }


# Pixels rendered at once: few enough that a layer's intermediate values stay in cache
# (python -m benchmarks.render_speed; docs/performance.md).
RENDER_CHUNK = 2**11
# Renders of at least this many pixels (a megapixel) show progress: on a CPU they take
# minutes (a 12-megapixel photograph and a 10x8 net: about 2.5).
RENDER_PROGRESS_PIXELS = 2**20


def render_fn(fn, height: int, width: int, coord_range=(0.0, 1.0),
              chunk: int = RENDER_CHUNK) -> np.ndarray:
  """The image in [0, 1] of fn: coords -> values in [-1, 1], at any size, `chunk` pixels
  at a time (bounded memory). The nets are continuous functions of position."""
  from dfm_flax.loop import progress  # (configs import this module: see ssim)
  coords = pixel_grid(height, width, coord_range)
  starts = range(0, len(coords), chunk)
  # A photograph of many megapixels takes minutes on a CPU: show it (not for small images).
  bar = progress.bar(len(starts), 0, f"rendering {width}x{height}",
                     disable=len(coords) < RENDER_PROGRESS_PIXELS, unit="chunk")
  parts = []
  for i in starts:
    parts.append(np.asarray(fn(coords[i:i + chunk])))
    bar.update(1)
  bar.close()
  return ((np.concatenate(parts) + 1) / 2).reshape(height, width, -1)


def render_params(params, height: int, width: int, coord_range=(0.0, 1.0), method: str = "auto",
                  chunk: int = RENDER_CHUNK) -> np.ndarray:
  """A Fourier Net's image from its per-layer (a, b) weights (e.g. decoded from a .dfm file)."""
  import jax  # (configs import this module: see ssim)

  from dfm_flax.nets import fourier  # (the same)
  apply = jax.jit(lambda xy: fourier.render_apply(params, xy, method))
  return render_fn(apply, height, width, coord_range, chunk)
