"""Thesis Fig. 5.1 from a compression grid: size % per (width, depth), colour = final loss.

  python -m experiments.grid_figure DIR --out FILE.png

DIR is any directory holding finished compression runs (an offline sweep directory
or the W&B agent's runs/compress_grid/): every metrics.json below it counts. The
final loss is averaged over the runs (seeds) of each cell; a markdown table of the
same numbers is printed.
"""
import glob
import json
import os
from collections import defaultdict

import numpy as np
from absl import app, flags

from dfm_flax.errors import UserError
from experiments.cli import parse_flags, run_main

_OUT = flags.DEFINE_string("out", None, "Output PNG.")
flags.mark_flags_as_required(["out"])


def collect(directory: str) -> dict:
  cells = defaultdict(list)
  for path in glob.glob(os.path.join(directory, "**", "metrics.json"), recursive=True):
    with open(path) as f:
      m = json.load(f)
    if "model_width" in m and "final_loss" in m:
      cells[(m["model_width"], m["model_depth"])].append(m)
  if not cells:
    raise UserError(f"no finished compression runs (metrics.json with model_width) under {directory}")
  return cells


def table(cells: dict) -> str:
  widths = sorted({w for w, _ in cells})
  depths = sorted({d for _, d in cells})
  lines = ["| depth \\ width | " + " | ".join(str(w) for w in widths) + " |",
           "|---|" + "---|" * len(widths)]
  for d in depths:
    row = []
    for w in widths:
      runs = cells.get((w, d))
      row.append("" if not runs else
                 f"{runs[0]['percent_of_raw']:.2f}% / {np.mean([r['final_loss'] for r in runs]):.4f}"
                 f" (n={len(runs)})")
    lines.append(f"| {d} | " + " | ".join(row) + " |")
  return "\n".join(lines)


def draw(cells: dict, out: str) -> None:
  from dfm_flax.evaluation.figures import plt  # pyplot with the Agg backend, when plotting
  widths = sorted({w for w, _ in cells})
  depths = sorted({d for _, d in cells})
  loss = np.full((len(depths), len(widths)), np.nan)
  for (w, d), runs in cells.items():
    loss[depths.index(d), widths.index(w)] = np.mean([r["final_loss"] for r in runs])
  fig, ax = plt.subplots(figsize=(1.3 * len(widths) + 2, 1.0 * len(depths) + 1.5))
  im = ax.imshow(np.log10(loss), cmap="viridis_r", origin="lower", aspect="auto")
  lo, hi = np.nanmin(np.log10(loss)), np.nanmax(np.log10(loss))
  for (w, d), runs in cells.items():
    shade = (np.log10(loss[depths.index(d), widths.index(w)]) - lo) / max(hi - lo, 1e-12)
    ax.text(widths.index(w), depths.index(d), f"{runs[0]['percent_of_raw']:.3g}%",
            ha="center", va="center", color="black" if shade < 0.5 else "white",
            fontsize=9, fontweight="bold")
  ax.set_xticks(range(len(widths)), widths)
  ax.set_yticks(range(len(depths)), depths)
  ax.set_xlabel("width")
  ax.set_ylabel("depth")
  steps = "/".join(str(s) for s in sorted({r["steps"] for runs in cells.values() for r in runs}))
  seeds = "/".join(str(n) for n in sorted({len(runs) for runs in cells.values()}))
  # Wrapped in two lines: on a small grid one line is wider than the figure and clips.
  ax.set_title(f"size (% of raw) in each cell\ncolour: log10 final loss, mean of {seeds} "
               f"runs of {steps} steps", fontsize=9, wrap=True)
  fig.colorbar(im, ax=ax, label="log10 final loss")
  fig.tight_layout()
  fig.savefig(out, dpi=110)
  plt.close(fig)


def _figure(argv):
  if len(argv) != 2:
    raise UserError("usage: python -m experiments.grid_figure DIR --out FILE.png")
  cells = collect(argv[1])
  draw(cells, _OUT.value)
  print(table(cells))
  print(f"wrote {_OUT.value}")


def main(argv):
  run_main(_figure, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
