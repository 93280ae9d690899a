"""Stability map of the compression recipe: peak lr x width x depth x image, collapse or not.

  python -m studies.stability --out runs/stability --images cat,clock,gravel \
      --sizes 6x6,7x6,7x8,8x6,8x8,6x10 --lrs 0.05,0.1,0.2 [--stop_at 1300] [--shard 0/2]
  python -m studies.stability --out runs/stability --report   # table + figure only
  python -m studies.stability --out runs/stab_b1_0.95 --set optim.b1=0.95 \
      --against runs/stab2 --labels "b1 0.9,b1 0.95" ...   # the same cells under two recipes

Each cell is one `compress.py:best` fit (per-layer lr = optim.lr / 2^m, warm-up 1,000
steps then cosine over 10,000) with the divergence guard in `detect` mode, so it never
intervenes and says whether the fit collapsed. Fits stop at --stop_at (default 1,300:
warm-up, peak and 300 steps past it, where the collapses happen; the schedule is the
full run's). Cells run one after another, skipping finished ones (rerun to resume);
--shard i/n runs every n-th cell, for n processes side by side. Writes
DIR/stability.csv (image, width, depth, lr, seed, psnr, best_logged_psnr, collapsed)
and DIR/stability.png (final PSNR per lr and size, collapses marked). With --against
BASE (a directory of the same cells run under another recipe): DIR/compare.csv and
DIR/compare.png, each cell's PSNR under both recipes side by side.
"""
import argparse
import functools
import itertools
import json
import os

from dfm_flax import files
from dfm_flax.data import images, photos
from dfm_flax.evaluation import figures
from dfm_flax.loop import guard, logs, train
from experiments import settings
from experiments.compress import get_config

FIELDS = ["image", "width", "depth", "lr", "seed", "psnr", "best_logged_psnr", "flat_psnr",
          "collapsed", "seconds"]


def cell_dir(out, image, w, d, lr, seed):
  return os.path.join(out, "runs", f"{image}_{w}x{d}_lr{lr:g}_s{seed}")


def run_cell(out, image, w, d, lr, seed, stop_at, overrides):
  c = get_config("best")
  c.image = photos.path(image, os.path.join(out, "images"))
  c.model.width, c.model.depth, c.optim.lr, c.seed = w, d, lr, seed
  c.train.stop_at, c.train.quiet, c.wandb.mode = stop_at, True, "disabled"
  c.train.checkpoint_every = stop_at
  c.guard.mode = "detect"
  c.optim.depth_ref = 0  # The map's lr is the peak every net gets, whatever its depth.
  c.update_from_flattened_dict(overrides)
  return train.train_and_evaluate(c, cell_dir(out, image, w, d, lr, seed))


def row(out, image, w, d, lr, seed):
  wd = cell_dir(out, image, w, d, lr, seed)
  m = logs.read_json(os.path.join(wd, "metrics.json"))
  if not m:
    return None
  logged = [r["psnr"] for r in logs.read_history(wd) if r.get("psnr") is not None]
  flat = flat_psnr(out, image)
  # Collapsed: the guard said so, or the final PSNR fails the guard's own health test
  # against the best logged one (cells run before the guard judged a run's last step
  # could end inside a collapse that had begun fewer than `patience` log steps before,
  # unreported). The test's rules are ratios of MSEs, so PSNRs convert directly.
  judge = guard.DivergenceGuard(guard.defaults(), reference_loss=10 ** (-flat / 10))
  judge.state.best = 10 ** (-max(logged) / 10)
  fell = not judge.healthy(10 ** (-m["psnr"] / 10))
  return {"image": image, "width": w, "depth": d, "lr": lr, "seed": seed,
          "psnr": round(m["psnr"], 2), "best_logged_psnr": round(max(logged), 2),
          "flat_psnr": round(flat, 2), "collapsed": bool(m.get("collapsed")) or fell,
          "seconds": m["seconds"]}


@functools.lru_cache(maxsize=None)
def flat_psnr(out, image) -> float:
  """PSNR of the image's mean colour: what a collapsed net draws (once per image)."""
  return images.flat_psnr(images.load_image(photos.path(image, os.path.join(out, "images"))))


def _pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt


def plot(rows, path):
  plt = _pyplot()
  images = sorted({r["image"] for r in rows})
  sizes = sorted({(r["width"], r["depth"]) for r in rows}, key=lambda s: (s[1], s[0]))
  fig, axes = plt.subplots(1, len(images), figsize=(4.2 * len(images), 3.6), squeeze=False)
  for ax, image in zip(axes[0], images):
    for w, d in sizes:
      pts = sorted((r["lr"], r["psnr"], r["collapsed"]) for r in rows
                   if r["image"] == image and (r["width"], r["depth"]) == (w, d))
      if not pts:
        continue
      line, = ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=4, label=f"{w}x{d}")
      bad = [p for p in pts if p[2]]
      ax.plot([p[0] for p in bad], [p[1] for p in bad], "x", ms=11, mew=2.5, color="tab:red")
    ax.set_xscale("log")
    ax.set_xlabel("peak lr (per layer: lr / 2^m)")
    ax.set_title(image)
    ax.grid(alpha=0.3)
  axes[0][0].set_ylabel("PSNR after warm-up + peak (dB)")
  axes[0][-1].legend(title="width x depth", fontsize=8)
  fig.suptitle("Stability map of compress.py:best (red x: collapsed)")
  figures.save(fig, path)


def plot_against(pairs, labels, path):
  """Each cell's PSNR under the base recipe and this one, side by side; red x: collapsed."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(max(6.0, 0.55 * len(pairs) + 2), 4.2))
  marked = False
  for i, pair in enumerate(pairs):
    ax.plot([i - 0.15, i + 0.15], [pair[0]["psnr"], pair[1]["psnr"]], "-", color="0.7", zorder=1)
    for j, (r, colour) in enumerate(zip(pair, ("tab:gray", "tab:blue"))):
      x = i - 0.15 + 0.3 * j
      ax.plot(x, r["psnr"], "o", color=colour, ms=6, label=labels[j] if i == 0 else None)
      if r["collapsed"]:
        ax.plot(x, r["psnr"], "x", ms=12, mew=2.5, color="tab:red",
                label=None if marked else "collapsed")
        marked = True
  ax.set_xticks(range(len(pairs)))
  ax.set_xticklabels([f"{p[0]['image']} {p[0]['width']}x{p[0]['depth']}\nlr {p[0]['lr']:g} s{p[0]['seed']}"
                      for p in pairs], rotation=60, ha="right", fontsize=8)
  ax.set_ylabel("PSNR after warm-up + peak (dB)")
  ax.grid(alpha=0.3, axis="y")
  ax.legend(fontsize=8)
  ax.set_title(f"The same cells, {labels[0]} (grey) and {labels[1]} (blue)")
  figures.save(fig, path)


def done_rows(out, cells):
  """The rows of the cells finished in `out`."""
  return [r for r in (row(out, im, w, d, lr, s) for im, (w, d), lr, s in cells) if r]


def write_against(out, base, labels, rows):
  """compare.csv and compare.png for the cells of `rows` (done in out) also done in base."""
  pairs = [(theirs, mine) for mine in rows
           if (theirs := row(base, mine["image"], mine["width"], mine["depth"], mine["lr"],
                             mine["seed"]))]
  fields = ["image", "width", "depth", "lr", "seed"] + [
      f"{k} ({label})" for label in labels for k in ("psnr", "collapsed")]
  files.write_csv(os.path.join(out, "compare.csv"), fields, [
      {**{k: a[k] for k in fields[:5]},
       **{f"{k} ({label})": r[k] for label, r in zip(labels, (a, b)) for k in ("psnr", "collapsed")}}
      for a, b in pairs])
  if pairs:
    plot_against(pairs, labels, os.path.join(out, "compare.png"))
  return pairs


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--images", default="cat,clock,gravel")
  p.add_argument("--sizes", default="6x6,7x6,7x8,8x6,8x8,6x10")
  p.add_argument("--lrs", default="0.05,0.1,0.2")
  p.add_argument("--seeds", default="0")
  p.add_argument("--stop_at", type=int, default=1300)
  p.add_argument("--shard", default="0/1")
  p.add_argument("--set", action="append", default=[], help="KEY=VALUE config override")
  p.add_argument("--report", action="store_true", help="only write the table and figure")
  p.add_argument("--against", default="", help="a directory of the same cells under another recipe")
  p.add_argument("--labels", default="base,this", help="names of the two recipes for --against")
  a = p.parse_args()
  sizes = [tuple(int(v) for v in s.split("x")) for s in a.sizes.split(",")]
  cells = list(itertools.product(a.images.split(","), sizes, [float(x) for x in a.lrs.split(",")],
                                 [int(s) for s in a.seeds.split(",")]))
  index, count = (int(v) for v in a.shard.split("/"))
  overrides = settings.for_command(a.out, a.set, a.report)  # Checked before any cell.
  if not a.report:
    for i, (image, (w, d), lr, seed) in enumerate(cells):
      if i % count == index:
        m = run_cell(a.out, image, w, d, lr, seed, a.stop_at, overrides)
        print(f"{image} {w}x{d} lr {lr:g} seed {seed}: {m['psnr']:.2f} dB"
              f"{'  COLLAPSED' if m.get('collapsed') else ''}", flush=True)
  rows = done_rows(a.out, cells)
  files.write_csv(os.path.join(a.out, "stability.csv"), FIELDS, rows)
  if rows:
    plot(rows, os.path.join(a.out, "stability.png"))
  summary = {"cells": len(cells), "done": len(rows), "collapsed": sum(r["collapsed"] for r in rows)}
  if a.against:
    pairs = write_against(a.out, a.against, a.labels.split(","), rows)
    summary.update(paired=len(pairs), collapsed_base=sum(p[0]["collapsed"] for p in pairs),
                   collapsed_this=sum(p[1]["collapsed"] for p in pairs))
  print(json.dumps(summary))


if __name__ == "__main__":
  main()
