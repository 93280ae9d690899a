"""Figures written next to the metrics (matplotlib, no display needed)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator  # noqa: E402
from PIL import Image, ImageDraw, ImageFont

from dfm_flax.data import images


def _show(ax, img01, title):
  img = np.clip(img01, 0, 1)
  if img.shape[-1] == 1:
    ax.imshow(img[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
  else:
    ax.imshow(img, interpolation="nearest")
  ax.set_title(title, fontsize=10)
  ax.axis("off")


def save(fig, path: str, dpi: int = 110) -> None:
  """Lay out, write and close a figure (a study or report figure, no display needed)."""
  fig.tight_layout()
  fig.savefig(path, dpi=dpi)
  plt.close(fig)


def image_row(panels: list[tuple[np.ndarray, str]], path: str, suptitle: str = "") -> None:
  """Images side by side, each with its title (e.g. original | DFM | JPEG)."""
  fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4.8 if suptitle else 4.4))
  for ax, (img, title) in zip(np.atleast_1d(axes), panels):
    _show(ax, img, title)
  if suptitle:
    fig.suptitle(suptitle, fontsize=12)
  fig.tight_layout(rect=(0, 0, 1, 0.94) if suptitle else None)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def training_curves(history: list[dict], keys: list[str], path: str, log_keys=("loss",)) -> None:
  """One panel per logged scalar against step.

  Margins are fixed in inches rather than found by `tight_layout`, which draws the
  figure twice to measure its text, and log axes get no minor ticks (each is an artist):
  together they halve the time of the one figure every run writes."""
  keys = [k for k in keys if any(row.get(k) is not None for row in history)]
  if not keys:
    return
  panel_w, height = 4.5, 3.4
  fig, axes = plt.subplots(1, len(keys), figsize=(panel_w * len(keys), height))
  width = panel_w * len(keys)
  fig.subplots_adjust(left=0.75 / width, right=1 - 0.2 / width, bottom=0.55 / height,
                      top=1 - 0.35 / height, wspace=0.95 / (panel_w - 0.95))
  for ax, key in zip(np.atleast_1d(axes), keys):
    rows = [r for r in history if r.get(key) is not None]
    ax.plot([r["step"] for r in rows], [r[key] for r in rows], lw=1.2)
    for r in history:  # Divergence-guard rollbacks (dfm_flax/loop/guard.py).
      if r.get("event") == "rollback":
        ax.axvline(r["step"], color="tab:red", lw=0.8, ls="--")
    ax.set_xlabel("step")
    ax.set_title(key)
    if key in log_keys:
      ax.set_yscale("log")
      # Labelled ticks at 1, 2 and 5 x 10^k (so a range within one decade still has
      # some), plain numbers rather than mathtext, and no minor ticks.
      ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
      ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
      ax.yaxis.set_minor_locator(NullLocator())
    ax.grid(alpha=0.3)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def interleave(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """a0, b0, a1, b1, ...: originals beside their reconstructions."""
  out = np.empty((2 * len(a), *a.shape[1:]), a.dtype)
  out[0::2], out[1::2] = a, b
  return out


def tile(imgs: np.ndarray, cols: int, pad: int = 1) -> np.ndarray:
  """(N, H, W, C) in [0, 1] -> one (rows*(H+pad), cols*(W+pad), C) mosaic, white gaps."""
  n, h, w, c = imgs.shape
  rows = -(-n // cols)
  canvas = np.ones((rows * (h + pad) + pad, cols * (w + pad) + pad, c), np.float32)
  for i, img in enumerate(imgs):
    r, q = divmod(i, cols)
    canvas[pad + r * (h + pad):pad + r * (h + pad) + h, pad + q * (w + pad):pad + q * (w + pad) + w] = img
  return canvas


TITLE_PX = 28  # Height of a grid's title strip.


def grid_scale(width: int) -> int:
  """Integer upscale that makes a mosaic at least ~600 px wide (pixels stay sharp)."""
  return max(1, -(-600 // width))


def image_grid(imgs: np.ndarray, path: str, cols: int = 8, title: str = "") -> None:
  """A grid of small images (samples, reconstructions, interpolations) as a PNG.

  Drawn with Pillow, not matplotlib: a grid is only a mosaic, upscaled by an integer
  factor (nearest, so each pixel stays a sharp block), under a title strip, and Pillow
  writes it ~50x faster; evaluation writes four of them at the end of every run."""
  mosaic = tile(np.clip(imgs, 0, 1), cols)
  scale = grid_scale(mosaic.shape[1])
  body = np.repeat(np.repeat(images.to_uint8(mosaic), scale, 0), scale, 1)
  body = np.repeat(body, 3, axis=2) if body.shape[2] == 1 else body
  strip = TITLE_PX if title else 0
  canvas = Image.new("RGB", (body.shape[1], body.shape[0] + strip), "white")
  canvas.paste(Image.fromarray(body), (0, strip))
  if title:
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default(size=TITLE_PX * 3 // 5)
    draw.text((body.shape[1] // 2, strip // 2), title, fill="black", font=font, anchor="mm")
  canvas.save(path)

