"""The codec's files against JPEG and WebP at their bytes, with JPEG under two settings:
Pillow's default Huffman tables and optimised ones (optimize=True, the project's anchor).

  python -m studies.jpeg_anchor --dfm docs/data/codec_0.3bpp.csv \
      --table docs/data/codec_0.3bpp.md --figure docs/figures/codec_0.3bpp.png

--dfm is a CSV of coded files (columns image, set, net, bpp, psnr; `set` names the photographs
the recipe was tuned on and those held out). Each built-in photograph (dfm_flax/data/photos.py)
gets the largest quality of each anchor whose file fits in bpp x pixels / 8 bytes, the
file's own size. Writes the tables (one per set, with means) and the figure.
"""
import argparse
import csv
import tempfile

import numpy as np

from dfm_flax.data import images, photos
from dfm_flax.evaluation import figures  # noqa: F401  (selects the Agg backend)

ANCHORS = ("jpeg_default", "jpeg_optimised", "webp")


def anchors(name: str, bpp: float, directory: str) -> dict:
  """PSNR of each anchor at the budget (None where no file is that small)."""
  image = images.load_image(photos.path(name, directory))  # as the codec reads it
  h, w, _ = image.shape
  budget = int(bpp * h * w / 8)
  found = {"jpeg_default": images.jpeg_at_size(image, budget, optimize=False),
           "jpeg_optimised": images.jpeg_at_size(image, budget),
           "webp": images.jpeg_at_size(image, budget, "WEBP")}
  return {k: (v["psnr"] if v["quality"] else None) for k, v in found.items()}


def _cell(value) -> str:
  return "none that small" if value is None else f"{value:.2f}"


def _diff(a, b) -> str:
  return "-" if a is None or b is None else f"{a - b:+.2f}"


def table(rows: list[dict]) -> str:
  lines = ["| image | net | bpp | .dfm | JPEG default | JPEG optimised | WebP | .dfm - JPEG default "
           "| .dfm - JPEG optimised | .dfm - WebP |", "|" + "---|" * 10]
  for r in rows:
    lines.append(f"| {r['image']} | {r['net']} | {r['bpp']} | {r['psnr']:.2f} | "
                 + " | ".join(_cell(r[k]) for k in ANCHORS) + " | "
                 + " | ".join(_diff(r["psnr"], r[k]) for k in ANCHORS) + " |")
  return "\n".join(lines)


def means(rows: list[dict]) -> str:
  """Mean .dfm - anchor over the photographs where the anchor exists, and wins."""
  parts = []
  for k in ANCHORS:
    d = [r["psnr"] - r[k] for r in rows if r[k] is not None]
    parts.append(f"{k.replace('_', ' ')}: {np.mean(d):+.2f} dB mean over {len(d)} "
                 f"({sum(x > 0 for x in d)} files ahead)")
  return "; ".join(parts)


def plot(rows: list[dict], path: str) -> None:
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(10, 4))
  x = np.arange(len(rows))
  marks = {"jpeg_default": ("JPEG, Pillow default", "v", "0.6"),
           "jpeg_optimised": ("JPEG, optimised Huffman", "s", "C1"),
           "webp": ("WebP", "^", "C2")}
  for k, (label, marker, colour) in marks.items():
    ys = [r[k] - r["psnr"] if r[k] is not None else np.nan for r in rows]
    ax.scatter(x, ys, marker=marker, color=colour, label=label, zorder=3)
  ax.axhline(0, color="C0", lw=2, label=".dfm file (reference)")
  for i, r in enumerate(rows):
    if r["set"] != rows[0]["set"] and (i == 0 or rows[i - 1]["set"] == rows[0]["set"]):
      ax.axvline(i - 0.5, color="k", lw=0.8, ls="--")
      ax.text(i - 0.4, ax.get_ylim()[1], " held out", va="top", fontsize=8)
  ax.set_xticks(x, [r["image"] for r in rows], rotation=45, ha="right")
  ax.set_ylabel("anchor PSNR - .dfm PSNR (dB)\nat the file's bytes")
  ax.legend(fontsize=8, loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, frameon=False)
  ax.set_title("below 0: the .dfm file is ahead", fontsize=9, loc="right", pad=22)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dfm", required=True, help="CSV of coded files: image,set,net,bpp,psnr")
  parser.add_argument("--table", required=True, help="markdown file for the tables")
  parser.add_argument("--figure", required=True, help="PNG file for the figure")
  a = parser.parse_args()
  with open(a.dfm, newline="") as f:
    rows = list(csv.DictReader(f))
  photos.check_names([r["image"] for r in rows])
  with tempfile.TemporaryDirectory() as directory:
    for r in rows:
      r["psnr"], r["bpp"] = float(r["psnr"]), float(r["bpp"])
      r.update(anchors(r["image"], r["bpp"], directory))
  text = []
  for name in dict.fromkeys(r["set"] for r in rows):
    part = [r for r in rows if r["set"] == name]
    text += [f"**{name}** ({len(part)} photographs): {means(part)}.", "", table(part), ""]
  with open(a.table, "w") as f:
    f.write("\n".join(text))
  plot(rows, a.figure)
  print("\n".join(text))


if __name__ == "__main__":
  main()
