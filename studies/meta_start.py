"""What a meta-learned start buys: fits of held-out crops from it and from random starts,
and the bytes that difference coding saves.

  python -m studies.meta_start --start runs/meta --out runs/meta_start [--crops 16]

The crops are `--crops` squares of the start's training size, cut from the images
its run held out (`meta.held_out` photographs, or with `meta.source=data` the last
`meta.held_out_last` images; never drawn in its training), or from other built-in
photographs it never trained on (`--held_out china,flower`), with a seed its own
evaluation did not use. Each crop is fitted, all its pixels every step, from the learned
start and from a random start (the compress net's initialisation, one seed per crop) with
two optimisers, both per layer lr / 2^m as the recipe:
  * sgd: plain gradient descent at the run's inner-loop step (what the start was learned for);
  * adam: Adam at a constant lr, the best of --adam_lrs for the random start at the last step.
  * lm (with --lm): Levenberg-Marquardt steps (dfm_flax/nets/levenberg.py) at the run's
    meta.lm_damping and meta.lm_down, or at the best of a small grid on *training* crops
    (--lm_tune; never on the held-out ones), up to 100 steps;
  * lm_search (with --lm_search): LM steps that each keep the best of 7 dampings x 4 step
    lengths from their one Jacobian (levenberg.fit's search), from the same first damping;
  * lm_refit (with --lm_refit): those searching steps with every point tried having its
    last layer refitted by levenberg.REFIT Gauss-Newton iterations (levenberg.fit's refit);
  * recipe (with --recipe_steps N): `compress.py:best`'s own optimiser and schedule for N
    steps (Adam b1 0.95, eps 1e-3, warm-up then cosine, peak 0.1 / 2^m): the full-length
    fit the codec makes, here on all the crop's pixels every step.
PSNR is recorded after 0, 1, 3, 10, 100 and 1,000 steps (and N). Then each fit from the
learned start at 10, 100 and 1,000 steps (and the recipe's at N) is coded (ANS, no
fine-tune) at 4-12 bits, once as its weights and once as the difference from the start
(codec `start=`); "bytes at equal PSNR" is the smallest file of each kind that decodes
within 0.1 dB of the uncoded fit (none may: the table says so), and the Bjontegaard delta
rate between the two 4-12-bit curves (`rate_distortion.bd_rate`) gives the bytes saved at
equal PSNR over the range both curves cover, for any fit.
Writes OUT/meta_start.json, OUT/meta_start.md and OUT/meta_start.png and prints the table.
"""
import os

import jax
import numpy as np
import optax

from dfm_flax import files
from dfm_flax.codec import rate_distortion
from dfm_flax.data import images
from dfm_flax.evaluation import figures
from dfm_flax.loop import logs, restore
from dfm_flax.loop.restore import saved_config
from dfm_flax.nets import fourier, levenberg
from dfm_flax.tasks import meta_learning
from studies import crop_fits

CHECKPOINTS = (0, 1, 3, 10, 100, 1000)
CODED_AT = (10, 100, 1000)
LM_CHECKPOINTS = (0, 1, 3, 10, 30, 100)  # Each LM step solves a weights x weights system.
LM_DAMPINGS = (0.03, 0.1, 0.3, 1.0, 3.0)
LM_DOWNS = (1.5, 2.0, 3.0)


def _tune_lm(cfg, start, lm_runner, crops):
  """(damping, down) of a small grid whose 10 LM steps from the learned start fit
  `crops` training crops best (fresh crops of the training images, never held-out ones)."""
  train = meta_learning.meta_crops(cfg, crops, cfg.seed + 7, held_out=False)
  starts = jax.tree.map(lambda x: np.broadcast_to(x, (crops, *x.shape)), start)
  scores = {}
  for damping in LM_DAMPINGS:
    for down in LM_DOWNS:
      fit = crop_fits.fit_segments(lm_runner, starts, train, (), [10], crop_fits.lm_state(crops, damping, down))
      scores[(damping, down)] = float(np.mean(fit[10][1]))
      print(f"lm damping {damping:g}, down {down:g}: {scores[(damping, down)]:.2f} dB after 10 "
            f"steps on {crops} training crops", flush=True)
  return max(scores, key=scores.get), scores


def main():
  p = crop_fits.start_parser(__doc__, crops=16)
  p.add_argument("--adam_lrs", default="0.003,0.01,0.03,0.1")
  p.add_argument("--recipe_steps", type=int, default=0,
                 help="also fit with compress.py:best's optimiser and schedule for this many steps")
  p.add_argument("--held_out", default="",
                 help="built-in photographs to cut the crops from instead of the run's own "
                      "held-out ones (none of its training photographs)")
  p.add_argument("--lm", action="store_true", help="also fit with Levenberg-Marquardt steps")
  p.add_argument("--lm_tune", action="store_true",
                 help="with --lm: choose its damping on training crops (a 5x3 grid)")
  p.add_argument("--lm_search", action="store_true",
                 help="also fit with LM steps that each try several dampings and lengths "
                      "(levenberg.fit's search; implies --lm)")
  p.add_argument("--lm_refit", action="store_true",
                 help="also fit with searching LM steps that refit the last layer at each "
                      "point they try (levenberg.fit's refit; implies --lm)")
  a = p.parse_args()

  cfg = saved_config(a.start)
  model_cfg, learned = restore.load_start(a.start)
  mc = cfg.meta
  if a.held_out:
    crop_fits.check_held_out(mc, a.held_out)
  targets = meta_learning.meta_crops(cfg, a.crops, cfg.seed + 2, held_out=True)
  channels = targets.shape[-1]
  coords = jax.numpy.asarray(images.pixel_grid(mc.crop, mc.crop, tuple(model_cfg.coord_range)))
  method = model_cfg.method
  dims = fourier.layer_dims(model_cfg.width, model_cfg.depth, channels)
  starts = {"learned": jax.tree.map(lambda x: np.broadcast_to(x, (a.crops, *x.shape)), learned),
            "random": crop_fits.random_starts(model_cfg, channels, a.crops)}
  per_layer = lambda lr: [lr / 2**m for m, _ in dims]  # noqa: E731
  sgd, adam = crop_fits.adam_runner(optax.sgd(1.0), coords, method), crop_fits.adam_runner(optax.adam(1.0), coords, method)
  fits = {}
  for name, start in starts.items():
    fits[("sgd", name)] = crop_fits.fit_segments(sgd, start, targets, per_layer(mc.inner_lr), CHECKPOINTS)
  adam_lr, fits[("adam", "random")] = crop_fits.adam_bar(adam, starts["random"], targets, dims,
                                               a.adam_lrs, CHECKPOINTS)
  fits[("adam", "learned")] = crop_fits.fit_segments(adam, starts["learned"], targets, per_layer(adam_lr),
                                            CHECKPOINTS)
  coded_at = [(opt, k) for opt in ("sgd", "adam") for k in CODED_AT]
  lm = None
  if a.lm or a.lm_search or a.lm_refit:
    levenberg.check_size(model_cfg.width, model_cfg.depth, channels, mc.crop**2)
    lm = meta_learning.lm_settings(mc)
    lm_runner = crop_fits.lm_runner(coords, method)
    if a.lm_tune:
      (lm["damping"], lm["down"]), grid = _tune_lm(cfg, learned, lm_runner, a.crops)
      lm["grid"] = {f"{d:g}/{n:g}": v for (d, n), v in grid.items()}
    # The fits below: plain, and with --lm_search / --lm_refit those kinds of steps too.
    lm["search"], lm["refit"] = a.lm_search, levenberg.REFIT if a.lm_refit else 0
    kinds = [("lm", lm_runner)]
    if a.lm_search:
      kinds.append(("lm_search", crop_fits.lm_runner(coords, method, True)))
    if a.lm_refit:
      kinds.append(("lm_refit", crop_fits.lm_runner(coords, method, True, levenberg.REFIT)))
    for opt, runner in kinds:
      for name, start in starts.items():
        fits[(opt, name)] = crop_fits.fit_segments(
            runner, start, targets, (), LM_CHECKPOINTS,
            crop_fits.lm_state(a.crops, lm["damping"], lm["down"]), f"{opt} fits, {name} start")
      coded_at += [(opt, k) for k in CODED_AT if k <= LM_CHECKPOINTS[-1]]
  if a.recipe_steps:
    tx, peak = crop_fits.recipe(a.recipe_steps)
    recipe = crop_fits.adam_runner(tx, coords, method)
    marks = sorted({k for k in CHECKPOINTS if k <= a.recipe_steps} | {a.recipe_steps})
    for name, start in starts.items():
      fits[("recipe", name)] = crop_fits.fit_segments(recipe, start, targets, per_layer(peak), marks)
    coded_at.append(("recipe", a.recipe_steps))
  # Mean over crops; a diverged fit (NaN) is left out of the mean and counted beside it.
  curves = {f"{opt}/{name}": {k: float(np.nanmean(f[k][1])) for k in f}
            for (opt, name), f in fits.items()}
  diverged = {f"{opt}/{name}": int(np.sum(~np.isfinite(f[max(f)][1])))
              for (opt, name), f in fits.items()}
  shape = (mc.crop, mc.crop, channels)
  coding = {}
  for opt, k in coded_at:
    params, psnrs = fits[(opt, "learned")][k]
    plain, diff, bd = [], [], []
    for i in range(a.crops):
      if not np.isfinite(psnrs[i]):  # A diverged fit: nothing to code.
        continue
      one = [(np.asarray(x[i]), np.asarray(y[i])) for x, y in params]
      t = np.asarray(targets[i])
      rd = [crop_fits.rd_points(one, t, coords, model_cfg, shape, s) for s in (None, learned)]
      plain.append(crop_fits.bytes_at(rd[0], float(psnrs[i])))
      diff.append(crop_fits.bytes_at(rd[1], float(psnrs[i])))
      bd.append(rate_distortion.bd_rate(*rd))
    pairs = [(x, y) for x, y in zip(plain, diff) if x and y]
    bd = [x for x in bd if x is not None]
    coding[f"{opt}/{k}"] = {
        "plain_bytes": float(np.mean([x for x, _ in pairs])) if pairs else None,
        "difference_bytes": float(np.mean([y for _, y in pairs])) if pairs else None,
        "saved": float(1 - np.mean([y / x for x, y in pairs])) if pairs else None,
        "crops": len(pairs),
        # Over the 4-12-bit curves at equal PSNR (Bjontegaard), defined for fits too fine
        # for any file to come within 0.1 dB of them: mean over crops, saved = -BD-rate.
        "saved_bd": float(-np.mean(bd)) if bd else None, "crops_bd": len(bd)}
  report = {"start": a.start, "crops": a.crops, "crop": mc.crop, "held_out": mc.held_out,
            "net": f"{model_cfg.width}x{model_cfg.depth}", "sgd_lr": mc.inner_lr,
            "adam_lr": adam_lr, "recipe_steps": a.recipe_steps, "lm": lm, "psnr": curves,
            "diverged": diverged, "coding": coding}
  os.makedirs(a.out, exist_ok=True)
  logs.write_json(os.path.join(a.out, "meta_start.json"), report)
  text = _table(report)
  files.write_bytes(os.path.join(a.out, "meta_start.md"), text.encode())
  _plot(report, os.path.join(a.out, "meta_start.png"))
  print(text)


def _table(r) -> str:
  marks = sorted({k for curve in r["psnr"].values() for k in curve})
  lines = [f"Held-out crops: {r['crops']} of {r['crop']}x{r['crop']} px from {r['held_out']}; "
           f"net {r['net']}; sgd lr {r['sgd_lr']:g} / 2^m, adam lr {r['adam_lr']:g} / 2^m"
           + (f"; recipe: compress.py:best over {r['recipe_steps']} steps" if r.get("recipe_steps")
              else "")
           + (f"; lm damping {r['lm']['damping']:g}, down {r['lm']['down']:g}" if r.get("lm")
              else "")
           + ("; lm_search: each step the best of 7 dampings x 4 lengths" if
              (r.get("lm") or {}).get("search") else "")
           + (f"; lm_refit: searching, each point's last layer refitted "
              f"({r['lm']['refit']} Gauss-Newton iterations)" if (r.get("lm") or {}).get("refit")
              else "") + ".", "",
           "| optimiser / start | " + " | ".join(f"{k} steps" for k in marks) + " |",
           "|---|" + "---|" * len(marks)]
  for key, curve in r["psnr"].items():
    note = f" ({r['diverged'][key]} diverged, left out)" if r["diverged"][key] else ""
    lines.append(f"| {key}{note} | "
                 + " | ".join(f"{curve[k]:.2f}" if k in curve else "" for k in marks) + " |")
  lines += ["", "| fit from the learned start | bytes, weights coded | bytes, difference coded | "
            "saved | saved at equal PSNR on the 4-12-bit curves (BD-rate) |",
            "|---|---|---|---|---|"]
  for key, c in r["coding"].items():
    bd = f"{c['saved_bd']:.0%} ({c['crops_bd']} crops)" if c.get("saved_bd") is not None else "-"
    if c["plain_bytes"]:
      lines.append(f"| {key} steps | {c['plain_bytes']:.0f} | {c['difference_bytes']:.0f} | "
                   f"{c['saved']:.0%} | {bd} |")
    else:  # Said, not dropped: a fit too fine for the codec's bit depths.
      lines.append(f"| {key} steps | no 4-12-bit file within 0.1 dB of the fit | | | {bd} |")
  return "\n".join(lines) + "\n"


def _plot(r, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4))
  styles = {"learned": "-", "random": "--"}
  colours = {"sgd": "tab:blue", "adam": "tab:orange", "recipe": "tab:green", "lm": "tab:red",
             "lm_search": "tab:purple", "lm_refit": "tab:brown"}
  for key, curve in r["psnr"].items():
    opt, start = key.split("/")
    ks = [k for k in sorted(curve) if k > 0]
    ax.plot(ks, [curve[k] for k in ks], styles[start], color=colours[opt], marker="o", ms=3,
            label=f"{opt}, {start} start")
  if "adam/random" in r["psnr"]:  # The bar for 10 steps from the learned start.
    bar = r["psnr"]["adam/random"]
    ax.axhline(bar[max(bar)], ls=":", color="grey", lw=1,
               label=f"{max(bar):,} Adam steps, random start")
  ax.set_xscale("log")
  ax.set_xlabel("fitting steps")
  ax.set_ylabel("PSNR on held-out crops (dB)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  figures.save(fig, path)


if __name__ == "__main__":
  crop_fits.run(main)
