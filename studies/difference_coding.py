"""Difference coding through the codec itself: files of the same fits coded as their weights
and as the difference from a learned start, each with and without the quantisation-aware
fine-tune on its own grid.

  python -m studies.difference_coding --start runs/meta --out runs/difference_coding \
      [--crops 8] [--bits 4,5,6,7,8] [--qat_steps 2000] [--steps 10000]

The crops are those of `studies.meta_start` (same seed: held-out crops of the start's
training size). Each is fitted once from the learned start with `compress.py:best` for
--steps (what `codec encode --init` runs), then coded at each of --bits four ways:
weights or difference (`encoding.encode_run`, start=None or the start run), fine-tuned for
--qat_steps or not. Per crop and kind the points (bytes, PSNR of the decoded file) make a
rate-distortion curve; the Bjontegaard delta rate (`rate_distortion.bd_rate`) between the
weights' and the difference's curves gives the bytes saved at equal PSNR. (The default
bits stop at 8: at 9 the 6x5 net's 2,736 weights outweigh a 32x32 colour crop's raw
pixels, and the codec refuses.)
Writes OUT/difference_coding.json and .md and prints the table. Resumes: a crop's fit and
fine-tunes are run directories under OUT.
"""
import os

import numpy as np

from dfm_flax import files
from dfm_flax.codec import encoding, rate_distortion
from dfm_flax.data import images
from dfm_flax.loop import logs, restore, train
from dfm_flax.loop.restore import saved_config
from dfm_flax.tasks import meta_learning
from experiments.compress import get_config, with_steps
from studies import crop_fits

KINDS = (("weights", False), ("difference", False), ("weights", True), ("difference", True))


def _label(kind: str, tuned: bool) -> str:
  return f"{kind}, {'fine-tuned' if tuned else 'no fine-tune'}"


def main():
  p = crop_fits.start_parser(__doc__, crops=8)
  p.add_argument("--bits", default="4,5,6,7,8")
  p.add_argument("--qat_steps", type=int, default=2000)
  p.add_argument("--steps", type=int, default=10000, help="the fit's steps (compress.py:best)")
  p.add_argument("--config", default="best", help="the compress.py variant of the fit")
  a = p.parse_args()

  start = os.path.abspath(a.start)
  cfg = saved_config(start)
  net, _ = restore.load_start(start)
  crop = cfg.meta.crop
  targets = meta_learning.meta_crops(cfg, a.crops, cfg.seed + 2, held_out=True)  # meta_start's crops.
  bits = [int(b) for b in a.bits.split(",")]
  os.makedirs(a.out, exist_ok=True)
  rows = []
  for i, flat in enumerate(targets):
    pixels = np.asarray(np.round((np.asarray(flat) + 1) * 127.5), np.uint8).reshape(crop, crop, -1)
    png = os.path.join(a.out, f"crop{i}.png")
    if not os.path.exists(png):
      with files.atomic_path(png) as tmp:
        images.save_png(pixels / 255.0, tmp)
    image = images.load_image(png)
    config = get_config(a.config)
    config.image, config.init_from = png, start
    with_steps(config, a.steps)
    for key in ("width", "depth", "coord_range", "method"):
      config.model[key] = net[key]
    fit = os.path.join(a.out, f"crop{i}.fit")
    float_psnr = train.train_and_evaluate(config, fit)["psnr"]
    row = {"crop": i, "fit_psnr": float_psnr, "points": {}}
    for kind, tuned in KINDS:
      points = []
      for b in bits:
        out = os.path.join(a.out, f"crop{i}.{kind}.{'qat' if tuned else 'plain'}.{b}bit.dfm")
        r = encoding.encode_run(fit, image, out, b, "ans", a.qat_steps if tuned else 0,
                                start=start if kind == "difference" else None)
        points.append((r["bytes"], r["psnr"]))
      row["points"][_label(kind, tuned)] = points
    for tuned in (False, True):
      row[f"bd_{'qat' if tuned else 'plain'}"] = rate_distortion.bd_rate(
          row["points"][_label("weights", tuned)], row["points"][_label("difference", tuned)])
    rows.append(row)
    print(f"crop {i}: fit {float_psnr:.2f} dB; difference vs weights at equal PSNR: "
          + ", ".join(f"{k} {_pct(row[f'bd_{k}'])}" for k in ("plain", "qat")), flush=True)
  report = {"start": start, "crop": crop, "crops": a.crops, "bits": bits, "steps": a.steps,
            "qat_steps": a.qat_steps, "rows": rows}
  logs.write_json(os.path.join(a.out, "difference_coding.json"), report)
  text = _table(report)
  files.write_bytes(os.path.join(a.out, "difference_coding.md"), text.encode())
  print(text)


def _pct(x) -> str:
  return "-" if x is None else f"{-x:+.0%} saved"


def _table(r) -> str:
  rows = r["rows"]
  lines = [f"{len(rows)} held-out {r['crop']}x{r['crop']} crops, each fitted once from the start "
           f"({r['steps']} steps; mean {np.mean([x['fit_psnr'] for x in rows]):.2f} dB), coded "
           f"at {', '.join(map(str, r['bits']))} bits; fine-tune {r['qat_steps']} steps.", "",
           "| coded as | " + " | ".join(f"{b} bits: bytes / dB" for b in r["bits"]) + " |",
           "|---|" + "---|" * len(r["bits"])]
  for kind, tuned in KINDS:
    label = _label(kind, tuned)
    pts = np.array([x["points"][label] for x in rows])  # crops x bits x (bytes, psnr)
    lines.append(f"| {label} | " + " | ".join(
        f"{pts[:, j, 0].mean():,.0f} / {pts[:, j, 1].mean():.2f}" for j in range(len(r["bits"])))
                 + " |")
  lines.append("")
  for key, name in (("plain", "no fine-tune"), ("qat", "both fine-tuned")):
    bd = [x[f"bd_{key}"] for x in rows if x[f"bd_{key}"] is not None]
    head = f"Difference vs weights at equal PSNR ({name}, BD-rate over the curves both cover): "
    lines.append(head + (f"{-np.mean(bd):.0%} smaller, mean of {len(bd)} crops (min "
                         f"{-max(bd):.0%}, max {-min(bd):.0%})." if bd else
                         "undefined (no crop's two curves share a PSNR range)."))
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
