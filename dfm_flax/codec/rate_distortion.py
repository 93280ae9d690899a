"""Rate-distortion results (rows of experiments.rd's rd.csv): the summary table and plot."""
from __future__ import annotations

import numpy as np
from scipy.interpolate import PchipInterpolator

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


def codec_points(rows) -> dict[str, list[tuple[float, float]]]:
  """Per codec, one (mean bpp, mean PSNR) point per DFM setting: the mean over images of
  the codec's files matched to that setting's DFM files; sorted by bpp."""
  by_setting = {}
  for rec in records(rows):
    for codec, r in rec.items():
      by_setting.setdefault((codec, rec["dfm"]["setting"]), []).append(
          (float(r["bpp"]), float(r["psnr"])))
  points = {}
  for (codec, _), pts in by_setting.items():
    points.setdefault(codec, []).append(tuple(np.mean(pts, axis=0)))
  return {codec: sorted(pts) for codec, pts in points.items()}


def pareto(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
  """The points no other point beats on both rate and PSNR, by rate."""
  front, best = [], -np.inf
  for bpp, psnr in sorted(points):
    if psnr > best:
      front.append((bpp, psnr))
      best = psnr
  return front


def bd_rate(reference: list[tuple[float, float]], test: list[tuple[float, float]]) -> float | None:
  """Bjontegaard delta rate: how much larger (> 0) or smaller (< 0) `test`'s files are than
  `reference`'s at equal PSNR, averaged over the PSNR range both cover. Points are (bytes or
  bpp, PSNR); each curve is reduced to its Pareto front, and log rate is interpolated as a
  function of PSNR piecewise-cubically and monotonically (PCHIP, the interpolation recent
  codec tests use instead of the original cubic fit). None when a curve has fewer than two
  points on its front or the PSNR ranges do not overlap."""
  fronts = [pareto(points) for points in (reference, test)]
  if any(len(f) < 2 for f in fronts):
    return None
  lo = max(f[0][1] for f in fronts)
  hi = min(f[-1][1] for f in fronts)
  if hi <= lo:
    return None
  areas = [PchipInterpolator([p for _, p in f], np.log([r for r, _ in f])).integrate(lo, hi)
           for f in fronts]
  return float(np.expm1((areas[1] - areas[0]) / (hi - lo)))


def plot(rows, path):
  """PSNR vs bpp: every setting's mean as a dot, each codec's best settings joined."""
  from dfm_flax.evaluation.figures import plt  # pyplot with the Agg backend, when plotting
  fig, ax = plt.subplots(figsize=(7, 4.8))
  for i, (codec, pts) in enumerate(sorted(codec_points(rows).items())):
    color = f"C{i}"
    ax.plot(*zip(*pts), "o", color=color, alpha=0.35, ms=4)
    ax.plot(*zip(*pareto(pts)), "o-", color=color, label=codec)
  xmax = max(float(r["bpp"]) for r in rows) * 1.1
  for i, (name, pts) in enumerate(PUBLISHED.items()):
    pts = [p for p in pts if p[0] <= xmax] or pts[:1]
    ax.plot(*zip(*pts), ls=":", marker="x^svd"[i], color="gray", alpha=0.8, label=f"{name}, published")
  ax.set_xlabel("bits per pixel")
  ax.set_ylabel("PSNR (dB)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  ax.set_title("mean over images at each DFM setting; lines join each codec's best\n"
               "(faint dots: dominated settings; grey: published, other images)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
