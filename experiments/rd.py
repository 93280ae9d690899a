"""Rate-distortion: DFM files vs JPEG, WebP and a SIREN (COIN) at matched bytes.

  python -m experiments.rd IMAGES... --out DIR [--sizes 4x6,6x6,8x6] [--bits 6,8,10]
      [--steps 3000] [--qat_steps 300] [--siren] [--siren_bits 8] [--siren_steps N] [--seed 0]

IMAGES are files or the built-in names coffee, astronaut, chelsea, camera (scikit-image).
For each DFM size (width x depth) one net per image is trained (compress:best, --steps;
DIR/runs, resumable). The images with the same channel count are fitted at once: one
stack of nets, vmapped over images, each net exactly as if trained alone. Each net is
then coded at each bit depth after a quantisation-aware fine-tune; JPEG and WebP get
the largest quality whose file is no larger than the DFM file; with --siren a SIREN
whose fp16 weights take about the same bytes is trained (--siren_steps) for the files
of --siren_bits. Writes DIR/rd.csv (image, codec, setting, bytes, bpp, psnr, ssim,
encode_s, decode_s), DIR/rd.png (PSNR vs bpp, mean over images per setting),
DIR/summary.md (per DFM setting: the mean over images of every codec at the DFM file's
bytes; * counts images where even JPEG quality 1 is larger than the DFM file) and
DIR/fits.csv (images fitted at once, size, steps, seconds). --replot redraws rd.png and
summary.md from rd.csv alone, with the rows of each --also OTHER/rd.csv replacing those of
the same image and DFM setting (e.g. a net refitted with another --seed).
"""
import csv
import os
import time

from absl import app, flags

from experiments.cli import parse_flags, run_main

_OUT = flags.DEFINE_string("out", None, "Output directory.")
_SIZES = flags.DEFINE_string("sizes", "4x6,6x6,8x6", "DFM widths x depths.")
_BITS = flags.DEFINE_string("bits", "6,8,10", "Bit depths of the .dfm files.")
_STEPS = flags.DEFINE_integer("steps", 3000, "Training steps per net.", lower_bound=1)
_QAT = flags.DEFINE_integer("qat_steps", 300, "Quantisation-aware fine-tune steps.", lower_bound=0)
_SIREN = flags.DEFINE_bool("siren", True, "Also train a SIREN at matched bytes.")
_SIREN_BITS = flags.DEFINE_string("siren_bits", "", "Match SIRENs to the DFM files of these bit "
                                  "depths only (default: all of --bits); each SIREN is a full fit.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the first image's nets (image i of a group: "
                             "seed + i); another seed refits a net that diverged.")
_REPLOT = flags.DEFINE_bool("replot", False, "Only redraw DIR/rd.png and DIR/summary.md from "
                            "DIR/rd.csv (no training; for a study still running).")
_ALSO = flags.DEFINE_multi_string("also", [], "--replot: another rd.csv whose DFM files (and "
                                  "their comparisons) replace those of the same image and setting.")
_SIREN_STEPS = flags.DEFINE_integer("siren_steps", 0, "SIREN training steps (default: --steps).",
                                    lower_bound=0)
flags.mark_flags_as_required(["out"])

FIELDS = ["image", "codec", "setting", "bytes", "bpp", "psnr", "ssim", "encode_s", "decode_s"]


def image_path(name: str, directory: str) -> str:
  from dfm_flax import photos
  return photos.path(name, directory)


def train(image: str, run_dir: str, overrides: dict) -> dict:
  from dfm_flax.train import train_and_evaluate
  from experiments.compress import get_config
  siren = overrides.get("model.kind") == "siren"
  config = get_config("siren" if siren else "best")
  config.image = image
  config.train.steps = (siren and _SIREN_STEPS.value) or _STEPS.value
  config.seed = _SEED.value
  config.train.quiet = True
  config.wandb.mode = "disabled"
  for key, value in overrides.items():
    section, name = key.split(".")
    config[section][name] = value
  return train_and_evaluate(config, run_dir)


def siren_hidden_for(nbytes: int, channels: int, layers: int = 5) -> int:
  """Largest hidden width whose fp16 SIREN fits in nbytes."""
  from dfm_flax import siren
  hidden = 4
  while 2 * siren.num_params(hidden + 1, layers, channels) <= nbytes:
    hidden += 1
  return hidden


def siren_row(name, path, image, nbytes, out_dir) -> dict:
  """Train a SIREN of about nbytes in fp16; score its fp16-rounded weights."""
  import jax
  from flax import nnx
  from dfm_flax import images
  from dfm_flax.restore import load_model
  hidden = siren_hidden_for(nbytes, image.shape[2])
  steps = _SIREN_STEPS.value or _STEPS.value
  run_dir = os.path.join(out_dir, "runs", f"{name}_siren{hidden}_{steps}steps")
  metrics = train(os.path.abspath(path), run_dir, {"model.kind": "siren", "model.siren_hidden": hidden})
  _, _, model = load_model(run_dir)
  state = nnx.state(model, nnx.Param)
  nnx.update(model, jax.tree.map(lambda x: x.astype("float16").astype("float32"), state))
  tic = time.perf_counter()
  h, w, _ = image.shape
  rec = images.render_fn(jax.jit(lambda xy: jax.numpy.clip(model(xy), -1, 1)), h, w)
  decode_s = time.perf_counter() - tic
  ref, rec = images.to_uint8(image) / 255, images.to_uint8(rec) / 255
  n = 2 * sum(x.size for x in jax.tree.leaves(state))
  return {"image": name, "codec": "siren-fp16", "setting": f"5x{hidden}, {steps} steps", "bytes": n,
          "bpp": 8 * n / (h * w), "psnr": images.psnr(ref, rec), "ssim": images.ssim(ref, rec),
          "encode_s": metrics["seconds"], "decode_s": decode_s}


def rows_for(group: list, out_dir: str):
  """Rows for a group of (label, path, image) with one channel count: at each size
  one stack of nets fits all of them at once (vmap), then each is coded and compared."""
  from dfm_flax import images
  from dfm_flax.encoding import encode_runs
  labels = [label for label, _, _ in group]
  for size in _SIZES.value.split(","):
    width, depth = (int(v) for v in size.split("x"))
    run_dir = os.path.join(out_dir, "runs", f"{'+'.join(labels)}_{size}")
    metrics = train(",".join(os.path.abspath(p) for _, p, _ in group), run_dir,
                    {"model.width": width, "model.depth": depth})
    per_image = [r["psnr"] for r in metrics.get("images", [metrics])]
    print(f"fitted {len(group)} image(s) at {size} in {metrics['seconds']:.1f} s: "
          f"{len(group) / metrics['seconds']:.4f} images/s; float PSNR "
          + ", ".join(f"{label} {p:.2f} dB" for label, p in zip(labels, per_image)), flush=True)
    with open(os.path.join(out_dir, "fits.csv"), "a") as f:
      f.write(f"{'+'.join(labels)},{size},{metrics['steps']},{metrics['seconds']}\n")
    for bits in (int(b) for b in _BITS.value.split(",")):
      outs = [os.path.join(out_dir, "files", f"{label}_{size}_{bits}bit.dfm") for label in labels]
      coded = encode_runs(run_dir, [im for _, _, im in group], outs, bits, "ans", _QAT.value)
      for (name, path, image), r in zip(group, coded):
        r["encode_s"] += metrics["seconds"] / len(group)  # The fit's share of each image.
        yield {"image": name, "codec": "dfm", "setting": f"{size} {bits}-bit", **r}
        for fmt in ("JPEG", "WEBP"):
          tic = time.perf_counter()
          j = images.jpeg_at_size(image, r["bytes"], fmt)
          yield {"image": name, "codec": fmt.lower(), "setting": f"q={j['quality']}",
                 "bytes": j["bytes"], "bpp": j["bpp"], "psnr": j["psnr"], "ssim": j["ssim"],
                 "encode_s": time.perf_counter() - tic, "decode_s": 0.0}
        if _SIREN.value and str(bits) in (_SIREN_BITS.value or _BITS.value).split(","):
          yield siren_row(name, path, image, r["bytes"], out_dir)


def groups(names: list[str], out_dir: str) -> list[list]:
  """(label, path, image) per image, grouped by channel count (fitted together)."""
  from dfm_flax import images
  by_channels = {}
  for name in names:
    path = image_path(name, out_dir)
    image = images.load_image(path)
    label = os.path.splitext(os.path.basename(name))[0]
    by_channels.setdefault(image.shape[2], []).append((label, path, image))
  return list(by_channels.values())


def _rd(argv):
  from dfm_flax.errors import UserError
  csv_path = os.path.join(_OUT.value, "rd.csv")
  if _REPLOT.value:
    if not os.path.exists(csv_path):
      raise UserError(f"--replot: no {csv_path} to read")
    from dfm_flax.rate_distortion import merge
    tables = []
    for path in [csv_path, *_ALSO.value]:
      try:
        with open(path, newline="") as f:
          tables.append(list(csv.DictReader(f)))
      except OSError as e:
        raise UserError(f"cannot read {path}: {e.strerror}") from None
    return report(merge(tables), _OUT.value)
  if len(argv) < 2:
    raise UserError("usage: python -m experiments.rd IMAGES... --out DIR")
  os.makedirs(os.path.join(_OUT.value, "files"), exist_ok=True)
  open(os.path.join(_OUT.value, "fits.csv"), "w").close()  # Rewritten, like rd.csv, each study.
  rows = []
  with open(csv_path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS)
    writer.writeheader()
    for group in groups(argv[1:], _OUT.value):
      for row in rows_for(group, _OUT.value):
        row = {k: row[k] for k in FIELDS}
        writer.writerow(row)
        f.flush()
        rows.append(row)
        print(f"{row['image']:>10} {row['codec']:>10} {row['setting']:>12} {row['bytes']:>8,} B "
              f"{row['bpp']:.3f} bpp {row['psnr']:.2f} dB", flush=True)
  report(rows, _OUT.value)


def report(rows, out_dir: str) -> None:
  """rd.png and summary.md (the per-setting means, printed too) from the rows."""
  if not rows:
    return
  from dfm_flax import rate_distortion
  rate_distortion.plot(rows, os.path.join(out_dir, "rd.png"))
  table = rate_distortion.summarize(rows)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(table)
  print(table)
  print(f"wrote {os.path.join(out_dir, 'rd.csv')}, rd.png and summary.md in {out_dir}")


def main(argv):
  run_main(_rd, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
