"""Robustness panel: the codec's recipe on many photographs, sizes and seeds.

  python -m studies.panel --out runs/panel                      # the whole panel
  python -m studies.panel --out runs/panel --images coffee,moon --bpps 0.3 --seeds 0
  python -m studies.panel --out runs/panel --stop_at 0          # full-length fits
  python -m studies.panel --out runs/panel --report             # table only
  python -m studies.panel --out runs/panel_eps2 --set optim.eps=1e-2   # another recipe

For each photograph (scikit-image, offline), target bpp and seed: the net size the
codec picks for that bpp (encoding.fit_for_bpp: on the sensitivity grid a wider net too
when a full-length fit ends flat or any fit ends collapsed), `compress.py:best` with the
divergence guard on, cut at --stop_at (default 1,300: the recipe's full warm-up and
peak, where collapses happen, and 300 steps past it; the lr schedule is the full
10,000-step one), then the .dfm file at the bit depth that hits the target
(encoding.encode_to_bpp), and JPEG and WebP (Pillow) at the file's bytes. Cells are
resumable (rerun the same command). Writes DIR/panel.csv (one row per fit) and
DIR/panel.md (per image and bpp: PSNR per seed, collapses, recoveries, delivered bpp,
JPEG and WebP) and DIR/panel.png, and prints the table.

--set KEY=VALUE changes a setting of `compress.py:best` for every fit (experiments/settings.py;
OUT records it and refuses fits of other settings).
The codec's own default fits are longer (`compress.py:codec`, 30,000 steps): `--stop_at 0
--set train.steps=30000` runs them; every cut fit's warm-up and peak are the same either way.

A collapse here: a fit whose guard says it ended collapsed, or a seed more than 3 dB
below the best seed of its cell.
"""
import argparse
import itertools
import os

from absl import logging

from dfm_flax import files
from dfm_flax.codec import encoding
from dfm_flax.codec.encoding import QAT_STEPS
from dfm_flax.data import images, photos
from dfm_flax.evaluation import figures
from dfm_flax.loop import logs, train
from experiments import settings
from experiments.compress import get_config

DEFAULT_IMAGES = ("astronaut,chelsea,coffee,camera,rocket,retina,hubble,ihc,brick,grass,moon,"
                  "page,text,coins")
FIELDS = ["image", "pixels", "target_bpp", "seed", "net", "grid", "bits", "bytes", "bpp", "psnr",
          "float_psnr", "recoveries", "collapsed", "jpeg_psnr", "jpeg_bytes", "webp_psnr",
          "webp_bytes", "seconds"]


def cell_name(name: str, bpp: float, seed: int, grid: str = "uniform") -> str:
  """A cell's directory under OUT/runs: the uniform grid's cells keep their old names."""
  return f"{name}_{bpp:g}bpp_s{seed}" + ("" if grid == "uniform" else f"_{grid}")


def fit_and_code(out, name, bpp, seed, stop_at, qat_steps, net="", bits=10, overrides=None,
                 grid="uniform"):
  path = photos.path(name, os.path.join(out, "images"))
  image = images.load_image(path)
  h, w, _ = image.shape
  cell = os.path.join(out, "runs", cell_name(name, bpp, seed, grid))
  c = get_config("best")
  c.image, c.seed = path, seed
  c.train.stop_at, c.train.quiet, c.wandb.mode = stop_at, True, "disabled"
  c.update_from_flattened_dict(overrides or {})
  run = os.path.join(cell, "run")
  if net:
    c.model.width, c.model.depth = (int(v) for v in net.split("x"))
    m = train.train_and_evaluate(c, run)
  else:  # As the codec: its pick, and on the sensitivity grid a wider net if that one stayed flat.
    run, m = encoding.fit_for_bpp(c, run, image, bpp, bits, grid,
                                  log=lambda line: print(f"{name} {bpp:g} bpp seed {seed}: {line}",
                                                         flush=True))
  row, bits, note = encoding.encode_to_bpp(run, image, os.path.join(cell, "file.dfm"), bpp, bits,
                                           "ans", qat_steps, grid=grid)
  if note:
    print(f"{name} {bpp:g} bpp: {note}", flush=True)
  jpeg = images.jpeg_at_size(image, row["bytes"])
  webp = images.jpeg_at_size(image, row["bytes"], "WEBP")
  result = {"image": name, "pixels": f"{w}x{h}x{image.shape[2]}", "target_bpp": bpp,
            "seed": seed, "net": f"{c.model.width}x{c.model.depth}", "grid": grid, "bits": bits,
            "bytes": row["bytes"], "bpp": round(row["bpp"], 4), "psnr": round(row["psnr"], 2),
            "float_psnr": round(m["psnr"], 2), "recoveries": m["recoveries"],
            "collapsed": m["collapsed"],
            "jpeg_psnr": round(jpeg["psnr"], 2) if jpeg["quality"] else "",
            "jpeg_bytes": jpeg["bytes"] if jpeg["quality"] else "",
            "webp_psnr": round(webp["psnr"], 2) if webp["quality"] else "",
            "webp_bytes": webp["bytes"] if webp["quality"] else "",
            "seconds": m["seconds"]}
  logs.write_json(os.path.join(cell, "row.json"), result)
  return result


def table(rows) -> str:
  """Markdown: one line per (image, target bpp)."""
  cells = {}
  for r in rows:  # Rows from before the grid was recorded are the uniform grid's.
    cells.setdefault((r["image"], float(r["target_bpp"]), r.get("grid") or "uniform"),
                     []).append(r)
  lines = ["| image | pixels | target bpp | net | delivered bpp | PSNR per seed (dB) | "
           "collapses | recoveries | JPEG same bytes | WebP same bytes | DFM - JPEG |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
  uniform_first = lambda kv: (*kv[0][:2], kv[0][2] != "uniform")  # noqa: E731
  for (image, bpp, grid), rs in sorted(cells.items(), key=uniform_first):
    psnrs = [float(r["psnr"]) for r in rs]
    bad = sum(1 for r in rs if str(r["collapsed"]) == "True" or float(r["psnr"]) < max(psnrs) - 3)
    jpeg = [float(r["jpeg_psnr"]) for r in rs if r["jpeg_psnr"] != ""]
    webp = [float(r["webp_psnr"]) for r in rs if r["webp_psnr"] != ""]
    mean = sum(psnrs) / len(psnrs)
    lines.append(
        f"| {image} | {rs[0]['pixels']} | {bpp:g} | {rs[0]['net']}"
        f"{', sensitivity grid' if grid == 'sensitivity' else ''} | "
        f"{', '.join(str(r['bpp']) for r in rs)} | {', '.join(f'{p:.2f}' for p in psnrs)} | "
        f"{bad} | {sum(int(r['recoveries']) for r in rs)} | "
        f"{f'{sum(jpeg) / len(jpeg):.2f}' if jpeg else 'none that small'} | "
        f"{f'{sum(webp) / len(webp):.2f}' if webp else 'none that small'} | "
        f"{f'{mean - sum(jpeg) / len(jpeg):+.2f}' if jpeg else '-'} |")
  return "\n".join(lines)


def plot(rows, path: str) -> None:
  """Per image (and target bpp): each seed's PSNR (dots, red if collapsed), JPEG and WebP
  at the same bytes (bars)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  keys = sorted({(r["image"], float(r["target_bpp"])) for r in rows})
  fig, ax = plt.subplots(figsize=(max(6, 0.75 * len(keys) + 2), 4))
  labelled = set()  # Each kind in the legend once, at its first bar (not every key has one).
  for x, key in enumerate(keys):
    rs = [r for r in rows if (r["image"], float(r["target_bpp"])) == key]
    for name, col, dx in (("jpeg_psnr", "tab:orange", -0.2), ("webp_psnr", "tab:green", 0.2)):
      vals = [float(r[name]) for r in rs if r[name] != ""]
      if vals:
        label = {"jpeg_psnr": "JPEG", "webp_psnr": "WebP"}[name]
        ax.bar(x + dx, sum(vals) / len(vals), 0.38, color=col, alpha=0.45,
               label=None if label in labelled else f"{label} at the same bytes")
        labelled.add(label)
    for r in rs:
      bad = str(r["collapsed"]) == "True"
      ax.plot(x, float(r["psnr"]), "x" if bad else "o", color="tab:red" if bad else "tab:blue",
              ms=6, label="DFM (.dfm file), one dot per seed" if x == 0 and r is rs[0] else None)
  ax.set_xticks(range(len(keys)), [f"{k[0]}\n{k[1]:g} bpp" if len({k[1] for k in keys}) > 1
                                   else k[0] for k in keys], rotation=45, ha="right", fontsize=8)
  ax.set_ylabel("PSNR (dB) at the .dfm file's bytes")
  ax.set_ylim(bottom=min(float(r["psnr"]) for r in rows) - 3)
  ax.grid(axis="y", alpha=0.3)
  ax.legend(fontsize=8)
  figures.save(fig, path)


def summary(rows) -> str:
  """The goals' figures: collapses, bpp within 10%, mean gain over JPEG per target."""
  out = []
  for bpp in sorted({float(r["target_bpp"]) for r in rows}):
    rs = [r for r in rows if float(r["target_bpp"]) == bpp]
    within = sum(abs(float(r["bpp"]) / bpp - 1) <= 0.1 for r in rs)
    gains = [float(r["psnr"]) - float(r["jpeg_psnr"]) for r in rs if r["jpeg_psnr"] != ""]
    wgap = [float(r["webp_psnr"]) - float(r["psnr"]) for r in rs if r["webp_psnr"] != ""]
    jpeg = (f"DFM - JPEG {sum(gains) / len(gains):+.2f} dB over {len(gains)} fits where JPEG "
            f"is that small" if gains else "JPEG is never that small")
    webp = (f"WebP - DFM {sum(wgap) / len(wgap):+.2f} dB over {len(wgap)} fits" if wgap
            else "WebP is never that small")
    out.append(f"{bpp:g} bpp: {len(rs)} fits, {within} within 10% of the target; {jpeg}; {webp}")
  return "\n".join(out)


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", required=True)
  p.add_argument("--images", default=DEFAULT_IMAGES)
  p.add_argument("--bpps", default="0.1,0.3,0.6")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--stop_at", type=int, default=1300, help="0: full-length fits")
  p.add_argument("--qat_steps", type=int, default=None,
                 help="default: the codec's (encoding.QAT_STEPS) for full-length fits, 100 for "
                      "cut ones")
  p.add_argument("--shard", default="0/1", help="i/n: every n-th cell (n processes)")
  p.add_argument("--net", default="", help="WxD: this net size instead of the codec's pick")
  p.add_argument("--bits", type=int, default=10, help="bit depth the codec starts from")
  p.add_argument("--grid", default="sensitivity", choices=("uniform", "sensitivity"),
                 help="the codec's quantisation grid for --bpp (dfm_flax/codec/encoding.py, GRIDS); "
                      "the codec's default, sensitivity")
  p.add_argument("--set", action="append", default=[],
                 help="KEY=VALUE: a setting of compress.py:best for every fit (repeatable)")
  p.add_argument("--report", action="store_true")
  a = p.parse_args()
  overrides = settings.for_command(a.out, a.set, a.report)  # Checked before any cell.
  if a.qat_steps is None:
    a.qat_steps = 100 if a.stop_at else QAT_STEPS
  logging.set_verbosity(logging.ERROR)  # orbax logs every checkpoint it writes.
  cells = list(itertools.product(a.images.split(","), [float(b) for b in a.bpps.split(",")],
                                 [int(s) for s in a.seeds.split(",")]))
  index, count = (int(v) for v in a.shard.split("/"))
  rows = []
  for i, (name, bpp, seed) in enumerate(cells):
    done = logs.read_json(os.path.join(a.out, "runs", cell_name(name, bpp, seed, a.grid),
                                       "row.json"))
    if done is None and not a.report and i % count == index:
      done = fit_and_code(a.out, name, bpp, seed, a.stop_at, a.qat_steps, a.net, a.bits,
                          overrides, a.grid)
      coding = "sensitivity grid" if done["grid"] == "sensitivity" else f"{done['bits']}-bit"
      print(f"{name} {bpp:g} bpp seed {seed}: {done['net']} {coding} "
            f"{done['bpp']} bpp {done['psnr']} dB (JPEG {done['jpeg_psnr'] or '-'}, "
            f"WebP {done['webp_psnr'] or '-'}), recoveries {done['recoveries']}"
            f"{', COLLAPSED' if done['collapsed'] else ''}", flush=True)
    if done is not None:
      rows.append(done)
  os.makedirs(a.out, exist_ok=True)
  files.write_csv(os.path.join(a.out, "panel.csv"), FIELDS, rows)
  if rows:
    plot(rows, os.path.join(a.out, "panel.png"))
  text = table(rows) + "\n\n" + summary(rows) + "\n"
  with open(os.path.join(a.out, "panel.md"), "w") as f:
    f.write(text)
  print(text)


if __name__ == "__main__":
  main()
