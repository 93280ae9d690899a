"""Thesis Fig. 5.3 on several photographs: one net at a fixed share of the raw size against
JPEG at the same bytes, for each recipe.

  python -m studies.equal_size --out runs/fig53 [--photos astronaut,coffee,rocket,hopper]
      [--percent 18] [--net 8x6] [--variants ,thesis]

Each built-in photograph is centre-cropped to the square whose raw RGB bytes make the
net's float32 weights --percent of it (the thesis: width 8, depth 6, about 18%), then
fitted with each `compress.py` variant ('' is the default recipe) and compared with JPEG
(optimised Huffman tables, the largest quality within the net's bytes). Fits resume and
finished ones are kept (rerun the same command). Writes OUT/equal_size.md (the table) and
OUT/equal_size.png (original | each recipe | JPEG, a row per photograph).
"""
import argparse
import math
import os

import numpy as np

from dfm_flax.data import images, photos
from dfm_flax.errors import UserError
from dfm_flax.evaluation import figures
from dfm_flax.loop import train
from dfm_flax.nets import fourier
from experiments.compress import get_config


def side_for(num_weights: int, percent: float, channels: int = 3) -> int:
  """The square side whose raw bytes make `num_weights` float32s `percent` of them."""
  return round(math.sqrt(4 * num_weights / (channels * percent / 100)))


def crop(name: str, side: int, directory: str) -> str:
  """The centre side x side crop of a built-in colour photograph, saved once as PNG."""
  pixels = photos.pixels(name)
  if pixels.ndim != 3:
    raise UserError(f"{name} is grey; the thesis's comparison is on colour photographs")
  h, w = pixels.shape[:2]
  if min(h, w) < side:
    raise UserError(f"{name} ({w}x{h}) is smaller than the {side}x{side} crop")
  top, left = (h - side) // 2, (w - side) // 2
  path = os.path.join(directory, f"{name}_{side}.png")
  if not os.path.exists(path):
    os.makedirs(directory, exist_ok=True)
    images.save_png(pixels[top:top + side, left:left + side] / 255.0, path)
  return path


def fit(path: str, variant: str, width: int, depth: int, workdir: str) -> dict:
  c = get_config(variant)
  c.image, c.model.width, c.model.depth = path, width, depth
  c.train.quiet, c.wandb.mode = True, "disabled"
  return train.train_and_evaluate(c, workdir)


def table(rows: list[dict], variants: list[str]) -> str:
  names = [v or "default" for v in variants]
  lines = ["| photograph | crop | size | " + " | ".join(f"DFM {n} PSNR / SSIM" for n in names)
           + " | JPEG (optimised) PSNR / SSIM |",
           "|---|---|---|" + "---|" * (len(names) + 1)]
  for r in rows:
    j = r["jpeg"]
    fits = " | ".join(f"{r[v]['psnr']:.2f} / {r[v]['ssim']:.3f}" for v in variants)
    lines.append(f"| {r['name']} | {r['side']}x{r['side']} | {r['bytes']:,} B "
                 f"({r['percent']:.1f}%) | {fits} | {j['psnr']:.2f} / {j['ssim']:.3f} "
                 f"(q {j['quality']}, {j['bytes']:,} B) |")
  means = " | ".join(f"{np.mean([r[v]['psnr'] for r in rows]):.2f}" for v in variants)
  lines.append(f"| mean PSNR | | | {means} | {np.mean([r['jpeg']['psnr'] for r in rows]):.2f} |")
  return "\n".join(lines)


def draw(rows: list[dict], variants: list[str], out: str) -> None:
  cols = len(variants) + 2
  fig, axes = figures.plt.subplots(len(rows), cols, figsize=(3 * cols, 3.2 * len(rows)), squeeze=False)
  for ax_row, r in zip(axes, rows):
    original = images.load_image(r["path"])
    # The file the fit's metrics report, encoded once at its quality (no second search).
    quality = r["jpeg"]["quality"] or 1
    jpeg = images.decode_image_bytes(images.jpeg_bytes(original, quality), original.shape[-1])
    panels = [(original, f"{r['name']} {r['side']}x{r['side']}")]
    for v in variants:
      recon = images.load_image(os.path.join(r["dirs"][v], "reconstruction.png"))
      panels.append((recon, f"DFM {v or 'default'}: {r[v]['psnr']:.2f} dB"))
    panels.append((jpeg, f"JPEG q{quality}: {r['jpeg']['psnr']:.2f} dB"))
    for ax, (img, title) in zip(ax_row, panels):
      ax.imshow(np.clip(img, 0, 1))
      ax.set_title(title, fontsize=9)
      ax.axis("off")
  figures.save(fig, out, dpi=80)  # photographs in PNG: about 0.7 MB for two rows


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--out", required=True)
  p.add_argument("--photos", default="astronaut,coffee,rocket,hopper")
  p.add_argument("--percent", type=float, default=18.0)
  p.add_argument("--net", default="8x6", help="WIDTHxDEPTH")
  p.add_argument("--variants", default=",thesis", help="compress.py variants; '' the default")
  a = p.parse_args(argv)
  try:
    width, depth = (int(v) for v in a.net.split("x"))
    variants = a.variants.split(",")
    names = a.photos.split(",")
    photos.check_names(names)
    n = fourier.num_params(width, depth, 3)
    side = side_for(n, a.percent)
    rows = []
    for name in names:
      path = crop(name, side, os.path.join(a.out, "images"))
      row = {"name": name, "side": side, "path": path, "bytes": 4 * n,
             "percent": 100 * 4 * n / (side * side * 3), "dirs": {}}
      for v in variants:
        row["dirs"][v] = os.path.join(a.out, v or "default", name)
        m = fit(path, v, width, depth, row["dirs"][v])
        row[v], row["jpeg"] = m, m["jpeg"]
        print(f"{name} {v or 'default'}: {m['psnr']:.2f} dB, JPEG {m['jpeg']['psnr']:.2f} dB",
              flush=True)
      rows.append(row)
  except UserError as e:
    raise SystemExit(f"error: {e}") from None
  text = table(rows, variants)
  with open(os.path.join(a.out, "equal_size.md"), "w") as f:
    f.write(text + "\n")
  draw(rows, variants, os.path.join(a.out, "equal_size.png"))
  print(text)
  print(f"wrote {os.path.join(a.out, 'equal_size.md')} and equal_size.png")


if __name__ == "__main__":
  main()
