"""Rate-distortion results (rows of experiments.rd's rd.csv): the summary table and plot."""
from __future__ import annotations

import numpy as np

# Published (bpp, PSNR) points on Kodak (24 images, 768x512): other images, for orientation.
PUBLISHED = {
    "JPEG (Kodak)": [(0.33, 26.6), (0.51, 29.0), (0.59, 29.8), (0.96, 32.4), (2.35, 37.9)],
    "WebP (Kodak)": [(0.30, 29.2), (0.51, 31.4), (1.00, 35.1)],
    "COIN (Kodak)": [(0.07, 23.2), (0.31, 26.4), (0.61, 28.4), (1.21, 30.6)],
    "COIN++ (Kodak)": [(0.27, 26.1)],
    "Struempler et al. (Kodak)": [(0.10, 25.6), (0.30, 28.4), (0.95, 32.3)],
}


def records(rows) -> list[dict]:
  """One record per DFM file: its row and the rows compared with it (same image, bytes)."""
  out = []
  for r in rows:
    if r["codec"] == "dfm":
      out.append({"dfm": r})
    elif out:
      out[-1][r["codec"]] = r
  return out


def merge(tables: list[list[dict]]) -> list[dict]:
  """Rows of several rd.csv files; a later file's DFM file (with the rows compared with
  it) replaces an earlier one of the same image and setting."""
  blocks = {}
  for rows in tables:
    for rec in records(rows):
      key = (rec["dfm"]["image"], rec["dfm"]["setting"])
      blocks[key] = [rec["dfm"]] + [r for c, r in rec.items() if c != "dfm"]
  return [row for block in blocks.values() for row in block]


def summarize(rows) -> str:
  """Markdown: per DFM setting, the mean over images of each codec at the DFM file's bytes."""
  by_setting = {}
  for rec in records(rows):
    by_setting.setdefault(rec["dfm"]["setting"], []).append(rec)

  def mean(recs, codec, key="psnr", spec=".2f"):
    vals = [float(r[codec][key]) for r in recs if codec in r]
    return format(np.mean(vals), spec) if vals else "-"

  def gain(recs, codec):
    vals = [float(r["dfm"]["psnr"]) - float(r[codec]["psnr"]) for r in recs if codec in r]
    return format(np.mean(vals), "+.2f") if vals else "-"

  lines = ["| DFM setting | images | bpp | DFM | JPEG | WebP | SIREN fp16 | DFM - JPEG | "
           "DFM - SIREN | encode s DFM / SIREN |", "|" + "---|" * 10]
  order = sorted(by_setting.items(), key=lambda kv: np.mean([float(r["dfm"]["bpp"]) for r in kv[1]]))
  for setting, recs in order:
    misses = sum(1 for r in recs if r.get("jpeg", {}).get("setting") == "q=None")
    jpeg = mean(recs, "jpeg") + (f" ({misses}*)" if misses else "")
    lines.append(
        f"| {setting} | {len(recs)} | {mean(recs, 'dfm', 'bpp', '.3f')} | {mean(recs, 'dfm')} | "
        f"{jpeg} | {mean(recs, 'webp')} | {mean(recs, 'siren-fp16')} | {gain(recs, 'jpeg')} | "
        f"{gain(recs, 'siren-fp16')} | {mean(recs, 'dfm', 'encode_s', '.0f')} / "
        f"{mean(recs, 'siren-fp16', 'encode_s', '.0f')} |")
  return "\n".join(lines) + "\n"


def plot(rows, path):
  from dfm_flax import figures  # noqa: F401  (Agg backend)
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  for codec in sorted({r["codec"] for r in rows}):
    points = {}
    for r in rows:
      if r["codec"] == codec:
        key = r["setting"] if codec == "dfm" else (r["setting"], round(float(r["bpp"]), 1))
        points.setdefault(key, []).append((float(r["bpp"]), float(r["psnr"])))
    xy = sorted((np.mean([p[0] for p in v]), np.mean([p[1] for p in v])) for v in points.values())
    ax.plot([p[0] for p in xy], [p[1] for p in xy], "o-", label=codec)
  xmax = max(float(r["bpp"]) for r in rows) * 1.1
  for i, (name, pts) in enumerate(PUBLISHED.items()):
    pts = [p for p in pts if p[0] <= xmax] or pts[:1]
    ax.plot(*zip(*pts), ls=":", marker="x^svd"[i], color="gray", alpha=0.8, label=f"{name}, published")
  ax.set_xlabel("bits per pixel")
  ax.set_ylabel("PSNR (dB)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title("rate-distortion, mean over images (grey: published, other images)")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
