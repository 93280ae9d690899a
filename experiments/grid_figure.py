"""Thesis Figs. 5.1 and 5.2 from a compression grid (width x depth, several seeds per cell).

  python -m experiments.grid_figure DIR --out FILE.png [--csv RUNS.csv] [--examples FIG52.png]
      [--examples_from MORE_DIRS]

DIR is any directory holding finished compression runs (an offline sweep directory
or the W&B agent's runs/compress_grid/): every metrics.json below it counts. FILE.png
has two panels: each cell coloured by the loss interval of its mean final loss (the
thesis's four colours, darker = better) with the size in % of the raw image, and by its
mean PSNR with the seeds' spread. --csv writes one row per run; --examples draws one
reconstruction from each loss interval (Fig. 5.2), from DIR's runs and --examples_from's.
A markdown table is printed.
"""
import csv
import glob
import json
import os
from collections import defaultdict

import numpy as np
from absl import app, flags

from dfm_flax.errors import UserError
from experiments.cli import parse_flags, run_main

_OUT = flags.DEFINE_string("out", None, "Output PNG (Fig. 5.1).")
_CSV = flags.DEFINE_string("csv", None, "Also write one row per run to this CSV.")
_EXAMPLES = flags.DEFINE_string("examples", None, "Also draw one reconstruction per loss interval "
                                "(Fig. 5.2) to this PNG.")
_EXAMPLES_FROM = flags.DEFINE_list("examples_from", [], "More directories of runs the --examples "
                                   "figure may pick from (e.g. longer runs of the same image).")
# The thesis's figure gives four loss intervals but its text does not keep their edges:
# decades of the final loss (MSE on [-1, 1]); 0.1 / 0.01 / 0.001 are 16 / 26 / 36 dB.
_EDGES = flags.DEFINE_list("intervals", ["0.1", "0.01", "0.001"],
                           "Final-loss edges between the intervals, decreasing.")
flags.mark_flags_as_required(["out"])

CSV_FIELDS = ("width", "depth", "seed", "steps", "final_loss", "psnr", "percent_of_raw", "seconds")


def collect(directory: str) -> dict:
  """{(width, depth): [run, ...]}, each run its metrics.json plus `seed` and `dir`."""
  cells = defaultdict(list)
  for path in sorted(glob.glob(os.path.join(directory, "**", "metrics.json"), recursive=True)):
    with open(path) as f:
      m = json.load(f)
    if "model_width" not in m or "final_loss" not in m:
      continue
    run_dir = os.path.dirname(path)
    try:
      with open(os.path.join(run_dir, "config.json")) as f:
        m["seed"] = json.load(f).get("seed")
    except (OSError, ValueError):
      m["seed"] = None
    m["dir"] = run_dir
    cells[(m["model_width"], m["model_depth"])].append(m)
  if not cells:
    raise UserError(f"no finished compression runs (metrics.json with model_width) under {directory}")
  return cells


def edges() -> list[float]:
  try:
    values = [float(e) for e in _EDGES.value]
  except ValueError:
    raise UserError(f"--intervals takes numbers, got {_EDGES.value}") from None
  if values != sorted(values, reverse=True) or len(set(values)) != len(values):
    raise UserError(f"--intervals must decrease strictly, got {_EDGES.value}")
  return values


def interval(loss: float, bounds: list[float]) -> int:
  """0 for the worst interval (loss >= bounds[0]) up to len(bounds) for the best."""
  return int(sum(loss < b for b in bounds))


def interval_names(bounds: list[float]) -> list[str]:
  names = [f">= {bounds[0]:g}"]
  names += [f"{lo:g} - {hi:g}" for hi, lo in zip(bounds, bounds[1:])]
  return names + [f"< {bounds[-1]:g}"]


def _mean(runs, key) -> float:
  return float(np.mean([r[key] for r in runs]))


def write_csv(cells: dict, path: str) -> None:
  rows = sorted((r for runs in cells.values() for r in runs),
                key=lambda r: (r["model_width"], r["model_depth"], r["seed"] or 0))
  with open(path, "w", newline="") as f:
    out = csv.writer(f)
    out.writerow(CSV_FIELDS)
    for r in rows:
      out.writerow([r["model_width"], r["model_depth"], r["seed"], r["steps"],
                    f"{r['final_loss']:.6g}", f"{r['psnr']:.3f}", f"{r['percent_of_raw']:.4g}",
                    r.get("seconds")])


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
                 f"{runs[0]['percent_of_raw']:.2f}% / {_mean(runs, 'final_loss'):.4f} / "
                 f"{_mean(runs, 'psnr'):.2f} dB (n={len(runs)})")
    lines.append(f"| {d} | " + " | ".join(row) + " |")
  return "\n".join(lines)


def draw(cells: dict, out: str, bounds: list[float]) -> None:
  from matplotlib.colors import BoundaryNorm, ListedColormap

  from dfm_flax.evaluation.figures import plt, save  # pyplot with the Agg backend, when plotting
  widths = sorted({w for w, _ in cells})
  depths = sorted({d for _, d in cells})
  grid = lambda f: np.array([[f(cells[(w, d)]) if (w, d) in cells else np.nan  # noqa: E731
                              for w in widths] for d in depths])
  level = grid(lambda runs: interval(_mean(runs, "final_loss"), bounds))
  psnr = grid(lambda runs: _mean(runs, "psnr"))
  spread = grid(lambda runs: float(np.std([r["psnr"] for r in runs])))
  size = grid(lambda runs: runs[0]["percent_of_raw"])
  n = len(bounds) + 1
  colours = plt.get_cmap("Blues")(np.linspace(0.2, 0.95, n))  # darker = better, as the thesis
  fig, (left, right) = plt.subplots(1, 2, figsize=(2.6 * len(widths) + 3, 1.0 * len(depths) + 2))
  left.imshow(level, cmap=ListedColormap(colours), norm=BoundaryNorm(np.arange(n + 1) - 0.5, n),
              origin="lower", aspect="auto")
  im = right.imshow(psnr, cmap="viridis", origin="lower", aspect="auto")
  for i in range(len(depths)):
    for j in range(len(widths)):
      if np.isnan(psnr[i, j]):
        continue
      left.text(j, i, f"{size[i, j]:.3g}%", ha="center", va="center", fontsize=9,
                fontweight="bold", color="white" if level[i, j] >= n / 2 else "black")
      right.text(j, i, f"{psnr[i, j]:.1f}\n±{spread[i, j]:.1f}", ha="center", va="center",
                 fontsize=8, color="white" if psnr[i, j] < np.nanmean(psnr) else "black")
  for ax in (left, right):
    ax.set_xticks(range(len(widths)), widths)
    ax.set_yticks(range(len(depths)), depths)
    ax.set_xlabel("width")
    ax.set_ylabel("depth")
  names = interval_names(bounds)
  left.legend(handles=[plt.Rectangle((0, 0), 1, 1, color=colours[k]) for k in range(n)],
              labels=names, title="mean final loss", fontsize=8, title_fontsize=8,
              loc="upper left", bbox_to_anchor=(1.01, 1.0))
  steps = "/".join(str(s) for s in sorted({r["steps"] for runs in cells.values() for r in runs}))
  seeds = "/".join(str(k) for k in sorted({len(runs) for runs in cells.values()}))
  left.set_title(f"size (% of raw); colour: loss interval\n(mean of {seeds} runs of {steps} steps)",
                 fontsize=9)
  right.set_title("PSNR (dB), mean ± std over the seeds", fontsize=9)
  fig.colorbar(im, ax=right, label="PSNR (dB)")
  save(fig, out)


def picks(runs: list[dict], bounds: list[float]) -> list[tuple[int, dict]]:
  """(interval, run) for each interval holding a run: the run nearest the interval's middle
  in log10 of the loss (the open ends taken to reach a decade past their edge)."""
  logs = np.log10([bounds[0] * 10] + bounds + [bounds[-1] / 10])
  out = []
  for k in range(len(bounds) + 1):
    inside = [r for r in runs if interval(r["final_loss"], bounds) == k]
    if inside:
      middle = (logs[k] + logs[k + 1]) / 2
      out.append((k, min(inside, key=lambda r: abs(np.log10(r["final_loss"]) - middle))))
  return out


def examples(cells: dict, out: str, bounds: list[float]) -> list[tuple[int, dict]]:
  """Fig. 5.2: for each loss interval, the run nearest its middle (geometric), rendered."""
  from PIL import Image

  from dfm_flax.evaluation.figures import plt, save  # pyplot with the Agg backend, when plotting
  runs = [r for rs in cells.values() for r in rs
          if os.path.exists(os.path.join(r["dir"], "reconstruction.png"))]
  names = interval_names(bounds)
  chosen = picks(runs, bounds)
  if not chosen:
    raise UserError("no run has a reconstruction.png to draw")
  fig, axes = plt.subplots(1, len(chosen), figsize=(3.2 * len(chosen), 3.8))
  for ax, (k, r) in zip(np.atleast_1d(axes), chosen):
    ax.imshow(Image.open(os.path.join(r["dir"], "reconstruction.png")))
    ax.set_title(f"loss {names[k]}\n{r['model_width']}x{r['model_depth']} seed {r['seed']}, "
                 f"{r['steps']:,} steps: {r['final_loss']:.3g}, {r['psnr']:.1f} dB", fontsize=9)
    ax.axis("off")
  save(fig, out)
  return chosen


def _figure(argv):
  if len(argv) != 2:
    raise UserError("usage: python -m experiments.grid_figure DIR --out FILE.png")
  cells, bounds = collect(argv[1]), edges()
  draw(cells, _OUT.value, bounds)
  written = [_OUT.value]
  if _CSV.value:
    write_csv(cells, _CSV.value)
    written.append(_CSV.value)
  if _EXAMPLES.value:
    pool = dict(cells)
    for i, extra in enumerate(_EXAMPLES_FROM.value):
      pool.update({(i, key): runs for key, runs in collect(extra).items()})
    for k, run in examples(pool, _EXAMPLES.value, bounds):
      print(f"Fig. 5.2, loss {interval_names(bounds)[k]}: {run['dir']}")
    written.append(_EXAMPLES.value)
  print(table(cells))
  print("wrote " + ", ".join(written))


def main(argv):
  run_main(_figure, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
