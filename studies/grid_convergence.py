"""How many steps the Fig. 5.1 grid needs: each cell's loss against the step count, and
whether the cells' ranking still changes.

  python -m studies.grid_convergence DIR [--out FIGURE.png] [--counts 250,500,1000,2000,4000]

DIR holds compression runs (any depth below it). A cell (width x depth) with several runs
is read from their final metrics, the seeds of a length averaged (a recipe whose lr
schedule spans the run, such as the default's cosine decay, is run once per length). A
cell with one run is read from its logged training loss at each count (the thesis's
constant lr: the loss at step s of a long run is the loss of an s-step run), the mean of
the last 5 logged values up to s (one batch's loss is noisy). Prints a markdown table of the loss per cell and count,
and Kendall's tau between the cells' ranking at each count and at the longest: 1.0 means
the same order.
"""
import argparse
import os
from collections import defaultdict

import numpy as np
from matplotlib.ticker import NullLocator
from scipy import stats

from dfm_flax.errors import UserError
from dfm_flax.evaluation import figures
from dfm_flax.loop import logs
from experiments import grid_figure

SMOOTH = 5  # logged values averaged at each count (the thesis logs every 50 steps)


def _runs(directory: str) -> dict:
  """{(width, depth): [(steps, final_loss, run_dir)]} of the finished runs below DIR."""
  return {cell: [(r["steps"], r["final_loss"], r["dir"]) for r in runs]
          for cell, runs in grid_figure.collect(directory).items()}


def logged_loss(history: list[dict], step: int) -> float:
  """Mean of the last SMOOTH logged losses at or before `step` (NaN before the first)."""
  values = [r["loss"] for r in history if r.get("loss") is not None and r["step"] <= step]
  return float(np.mean(values[-SMOOTH:])) if values else float("nan")


def curves(cells: dict, counts: list[int]) -> dict:
  """{cell: {count: loss}} from final metrics (several lengths) or the logged loss."""
  out = {}
  for cell, runs in cells.items():
    if len(runs) > 1:  # several lengths (or seeds): their final metrics, seeds averaged
      by_steps = defaultdict(list)
      for s, loss, _ in runs:
        by_steps[s].append(loss)
      out[cell] = {s: float(np.mean(v)) for s, v in sorted(by_steps.items())}
    else:
      steps, _, run_dir = runs[0]
      history = logs.read_history(run_dir)
      out[cell] = {c: logged_loss(history, c) for c in counts if c <= steps}
  return out


def ranking_agreement(losses: dict) -> dict:
  """Kendall's tau of the cells' order at each count against the longest count that
  every cell reached."""
  shared = sorted(set.intersection(*(set(v) for v in losses.values())))
  if len(shared) < 2 or len(losses) < 2:
    return {}
  last = shared[-1]
  ref = [losses[c][last] for c in sorted(losses)]
  return {s: float(stats.kendalltau([losses[c][s] for c in sorted(losses)], ref).statistic)
          for s in shared}


def table(losses: dict, tau: dict) -> str:
  counts = sorted(set().union(*(set(v) for v in losses.values())))
  lines = ["| cell | " + " | ".join(f"{c:,}" for c in counts) + " |",
           "|---|" + "---|" * len(counts)]
  for cell in sorted(losses):
    lines.append(f"| {cell[0]}x{cell[1]} | " + " | ".join(
        f"{losses[cell][c]:.4g}" if c in losses[cell] else "" for c in counts) + " |")
  if tau:
    lines.append("| Kendall tau vs longest | " + " | ".join(
        f"{tau[c]:.2f}" if c in tau else "" for c in counts) + " |")
  return "\n".join(lines)


def draw(losses: dict, path: str, title: str) -> None:
  fig, ax = figures.plt.subplots(figsize=(6, 4))
  for cell in sorted(losses):
    steps = sorted(losses[cell])
    ax.plot(steps, [losses[cell][s] for s in steps], marker="o", ms=3, label=f"{cell[0]}x{cell[1]}")
  ax.set_xscale("log")
  ax.set_yscale("log")
  counts = sorted(set().union(*(set(v) for v in losses.values())))
  ax.set_xticks(counts, [f"{c:,}" for c in counts])
  ax.xaxis.set_minor_locator(NullLocator())
  ax.set_xlabel("training steps")
  ax.set_ylabel("final loss (MSE on [-1, 1])")
  ax.set_title(title, fontsize=9)
  ax.legend(title="width x depth", fontsize=8)
  figures.save(fig, path)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("dir")
  p.add_argument("--out", help="loss-against-steps figure (PNG)")
  p.add_argument("--counts", default="250,500,1000,2000,4000",
                 help="step counts read from the logged loss of single long runs")
  a = p.parse_args(argv)
  try:
    counts = [int(c) for c in a.counts.split(",")]
  except ValueError:
    raise SystemExit(f"error: --counts takes integers, got {a.counts!r}") from None
  try:
    losses = curves(_runs(a.dir), counts)
  except UserError as e:
    raise SystemExit(f"error: {e}") from None
  tau = ranking_agreement(losses)
  print(table(losses, tau))
  if a.out:
    draw(losses, a.out, f"{os.path.basename(os.path.normpath(a.dir))}: loss against steps")
    print(f"wrote {a.out}")


if __name__ == "__main__":
  main()
