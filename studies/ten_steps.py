"""Ten steps from a learned start against 1,000 from random starts, crop by crop.

  python -m studies.ten_steps --start runs/meta_lm_search --out runs/ten_steps \\
      [--crops 128] [--held_out china,flower,hopper,motorcycle]

studies.meta_start compares mean curves over 16 crops, and that mean moves by a dB or
more from one set of 16 crops to another. This asks its one question of many crops, paired:
each of --crops held-out crops of the start's training size (the photographs its run held
out, or --held_out ones it never trained on; crop seed --seed, not meta_start's) is fitted

  * by --steps Levenberg-Marquardt steps from the learned start, of the kind `codec encode
    --lm_steps` takes (--lm refit: each step searches its damping and length and refits the
    last layer at every point it tries; search: without the refit; plain: neither), at the
    run's meta.lm_damping;
  * and by --adam_steps Adam steps from a random start (its own seed per crop) at each of
    --adam_lrs, per layer lr / 2^m: the bar is the best lr's mean, as in meta_start.

Prints both means, the paired difference (learned - bar) with its standard error and a
95% interval (normal), and on how many crops the learned start is ahead. Writes
OUT/ten_steps.json (every crop's pair) and OUT/ten_steps.png (each crop's pair against the
diagonal, and the sorted differences).
"""
import os

import jax
import numpy as np
import optax

from dfm_flax.data import images
from dfm_flax.errors import UserError
from dfm_flax.evaluation import figures
from dfm_flax.loop import logs, restore
from dfm_flax.loop.restore import saved_config
from dfm_flax.nets import fourier, levenberg
from dfm_flax.tasks import meta_learning
from studies import crop_fits

LM_KINDS = ("plain", "search", "refit")


def compare(lm_psnr, bar_psnr) -> dict:
  """Paired summary of per-crop PSNRs: means, the mean difference, its standard error
  and 95% interval, and the crops ahead. A crop whose bar fit diverged (NaN) is left out."""
  lm_psnr, bar_psnr = np.asarray(lm_psnr, np.float64), np.asarray(bar_psnr, np.float64)
  keep = np.isfinite(lm_psnr) & np.isfinite(bar_psnr)
  d = lm_psnr[keep] - bar_psnr[keep]
  se = float(np.std(d, ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
  mean = float(np.mean(d))
  return {"crops": int(d.size), "left_out": int(np.sum(~keep)),
          "learned": float(np.mean(lm_psnr[keep])), "bar": float(np.mean(bar_psnr[keep])),
          "difference": mean, "standard_error": se,
          "interval_95": [mean - 1.96 * se, mean + 1.96 * se], "ahead": int(np.sum(d > 0))}


def summary_line(r: dict) -> str:
  lo, hi = r["interval_95"]
  return (f"{r['steps']} {r['lm']} LM steps, learned start: {r['learned']:.2f} dB; "
          f"{r['adam_steps']:,} Adam steps ({'peak ' if r.get('adam_schedule') == 'recipe' else ''}"
          f"lr {r['adam_lr']:g} / 2^m, {r.get('adam_schedule', 'constant')} schedule), random start: "
          f"{r['bar']:.2f} dB; difference {r['difference']:+.2f} dB (standard error "
          f"{r['standard_error']:.2f}, 95% interval {lo:+.2f} to {hi:+.2f}); learned start "
          f"ahead on {r['ahead']} of {r['crops']} crops ({r['held_out']}, seed {r['seed']})")


def main():
  p = crop_fits.start_parser(__doc__, crops=128)
  p.add_argument("--seed", type=int, default=None,
                 help="crop seed (default: the run's seed + 13; meta_start uses + 2)")
  p.add_argument("--held_out", default="",
                 help="built-in photographs to cut the crops from instead of the run's own "
                      "held-out ones (none of its training photographs)")
  p.add_argument("--steps", type=int, default=10)
  p.add_argument("--lm", choices=LM_KINDS, default="refit")
  p.add_argument("--adam_steps", type=int, default=1000)
  p.add_argument("--adam_lrs", default="0.03,0.1,0.2,0.4")
  p.add_argument("--adam_schedule", choices=("constant", "recipe"), default="constant",
                 help="the bar's lr over its steps: constant, or the codec recipe's optimiser "
                      "and schedule (compress.py:best: b1 0.95, eps 1e-3, warm-up then cosine "
                      "decay) peaking at each of --adam_lrs")
  a = p.parse_args()
  if a.crops < 2 or a.steps < 1 or a.adam_steps < 1:
    raise UserError(f"--crops must be at least 2 and --steps, --adam_steps at least 1; got "
                    f"{a.crops}, {a.steps}, {a.adam_steps}")
  cfg = saved_config(a.start)
  model_cfg, learned = restore.load_start(a.start)
  mc = cfg.meta
  if a.held_out:
    crop_fits.check_held_out(mc, a.held_out)
  seed = cfg.seed + 13 if a.seed is None else a.seed
  targets = meta_learning.meta_crops(cfg, a.crops, seed, held_out=True)
  channels = targets.shape[-1]
  levenberg.check_size(model_cfg.width, model_cfg.depth, channels, mc.crop**2)
  coords = jax.numpy.asarray(images.pixel_grid(mc.crop, mc.crop, tuple(model_cfg.coord_range)))
  method = model_cfg.method
  dims = fourier.layer_dims(model_cfg.width, model_cfg.depth, channels)

  lm = meta_learning.lm_settings(mc)
  runner = crop_fits.lm_runner(coords, method, search=a.lm != "plain",
                                 refit=levenberg.REFIT if a.lm == "refit" else 0)
  starts = jax.tree.map(lambda x: np.broadcast_to(x, (a.crops, *x.shape)), learned)
  fit = crop_fits.fit_segments(runner, starts, targets, (), [a.steps],
                                 crop_fits.lm_state(a.crops, lm["damping"], lm["down"]),
                                 f"{a.lm} LM fits, learned start")
  lm_psnr = fit[a.steps][1]
  tx = optax.adam(1.0) if a.adam_schedule == "constant" else crop_fits.recipe(a.adam_steps)[0]
  adam = crop_fits.adam_runner(tx, coords, method)
  adam_lr, bar = crop_fits.adam_bar(adam, crop_fits.random_starts(model_cfg, channels, a.crops),
                                     targets, dims, a.adam_lrs, [a.adam_steps])
  bar_psnr = bar[a.adam_steps][1]

  report = {"start": a.start, "held_out": mc.held_out, "seed": seed, "crop": mc.crop,
            "net": f"{model_cfg.width}x{model_cfg.depth}", "steps": a.steps, "lm": a.lm,
            "lm_damping": lm["damping"], "adam_steps": a.adam_steps, "adam_lr": adam_lr,
            "adam_schedule": a.adam_schedule,
            **compare(lm_psnr, bar_psnr),
            "per_crop": {"learned": [float(x) for x in lm_psnr],
                         "bar": [float(x) for x in bar_psnr]}}
  os.makedirs(a.out, exist_ok=True)
  logs.write_json(os.path.join(a.out, "ten_steps.json"), report)
  _plot(report, os.path.join(a.out, "ten_steps.png"))
  print(summary_line(report))


def _plot(r, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  lm_psnr, bar_psnr = np.asarray(r["per_crop"]["learned"]), np.asarray(r["per_crop"]["bar"])
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4.2))
  left.scatter(bar_psnr, lm_psnr, s=12, alpha=0.7)
  finite = np.concatenate([lm_psnr, bar_psnr])
  finite = finite[np.isfinite(finite)]
  lo, hi = finite.min() - 1, finite.max() + 1
  left.plot([lo, hi], [lo, hi], ":", color="grey", lw=1, label="equal")
  left.set_xlabel(f"{r['adam_steps']:,} Adam steps, random start (dB)")
  left.set_ylabel(f"{r['steps']} {r['lm']} LM steps, learned start (dB)")
  left.set_title(f"{r['crops']} held-out {r['crop']}x{r['crop']} crops ({r['held_out']})", fontsize=9)
  left.legend(fontsize=8)
  d = np.sort(lm_psnr - bar_psnr)
  d = d[np.isfinite(d)]
  right.bar(np.arange(d.size), d, width=1.0, color=np.where(d > 0, "tab:green", "tab:red"))
  right.axhline(r["difference"], color="black", lw=1,
                label=f"mean {r['difference']:+.2f} dB (se {r['standard_error']:.2f})")
  right.set_xlabel("crops, sorted")
  right.set_ylabel("learned - bar (dB)")
  right.set_title(f"ahead on {r['ahead']} of {r['crops']}", fontsize=9)
  right.legend(fontsize=8)
  for ax in (left, right):
    ax.grid(alpha=0.3)
  figures.save(fig, path)


if __name__ == "__main__":
  crop_fits.run(main)
