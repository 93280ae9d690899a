"""A rate-distortion study: fit DFM nets, code them at several bit depths, and compare each
file with JPEG, WebP and (optionally) a SIREN at the same bytes. experiments.rd is its
command line; dfm_flax.rate_distortion turns the rows into the table and the plot."""
from __future__ import annotations

import csv
import dataclasses
import os
import time

import jax
from flax import nnx

from dfm_flax.codec import rate_distortion
from dfm_flax.codec.encoding import encode_runs
from dfm_flax.data import images, photos
from dfm_flax.loop import train
from dfm_flax.loop.restore import load_model
from dfm_flax.nets import siren
from experiments.compress import get_config, with_steps

FIELDS = ["image", "codec", "setting", "bytes", "bpp", "psnr", "ssim", "encode_s", "decode_s"]


@dataclasses.dataclass(frozen=True)
class Study:
  out_dir: str
  sizes: tuple[tuple[int, int], ...] = ((4, 6), (6, 6), (8, 6))  # (width, depth)
  bits: tuple[int, ...] = (6, 8, 10)
  steps: int = 3000
  qat_steps: int = 300
  siren: bool = True
  siren_bits: tuple[int, ...] = ()  # empty: every bit depth
  siren_steps: int = 0  # 0: `steps`
  seed: int = 0
  settings: tuple = ()  # (KEY, value) pairs set on every DFM fit's compress.py:best (--set)

  def fit(self, image: str, run_dir: str, overrides: dict) -> dict:
    """One `compress:best` (or `:siren`) run of `steps`; resumes a run already in run_dir."""
    siren = overrides.get("model.kind") == "siren"
    config = get_config("siren" if siren else "best")
    config.image = image
    with_steps(config, (siren and self.siren_steps) or self.steps)
    config.seed = self.seed
    config.train.quiet = True
    config.wandb.mode = "disabled"
    config.update_from_flattened_dict({**({} if siren else dict(self.settings)), **overrides})
    return train.train_and_evaluate(config, run_dir)

  def siren_row(self, name, path, image, nbytes) -> dict:
    """Train a SIREN of about nbytes in fp16; score its fp16-rounded weights."""
    hidden = siren_hidden_for(nbytes, image.shape[2])
    steps = self.siren_steps or self.steps
    run_dir = os.path.join(self.out_dir, "runs", f"{name}_siren{hidden}_{steps}steps")
    metrics = self.fit(os.path.abspath(path), run_dir, {"model.kind": "siren", "model.siren_hidden": hidden})
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

  def rows_for(self, group: list):
    """Rows for a group of (label, path, image) with one channel count: at each size
    one stack of nets fits all of them at once (vmap), then each is coded and compared."""
    labels = [label for label, _, _ in group]
    for width, depth in self.sizes:
      size = f"{width}x{depth}"
      run_dir = os.path.join(self.out_dir, "runs", f"{'+'.join(labels)}_{size}")
      metrics = self.fit(",".join(os.path.abspath(p) for _, p, _ in group), run_dir,
                         {"model.width": width, "model.depth": depth})
      per_image = [r["psnr"] for r in metrics.get("images", [metrics])]
      print(f"fitted {len(group)} image(s) at {size} in {metrics['seconds']:.1f} s: "
            f"{len(group) / metrics['seconds']:.4f} images/s; float PSNR "
            + ", ".join(f"{label} {p:.2f} dB" for label, p in zip(labels, per_image)), flush=True)
      with open(os.path.join(self.out_dir, "fits.csv"), "a") as f:
        f.write(f"{'+'.join(labels)},{size},{metrics['steps']},{metrics['seconds']}\n")
      for bits in self.bits:
        outs = [os.path.join(self.out_dir, "files", f"{label}_{size}_{bits}bit.dfm") for label in labels]
        coded = encode_runs(run_dir, [im for _, _, im in group], outs, bits, "ans", self.qat_steps)
        for (name, path, image), r in zip(group, coded):
          r["encode_s"] += metrics["seconds"] / len(group)  # The fit's share of each image.
          yield {"image": name, "codec": "dfm", "setting": f"{size} {bits}-bit", **r}
          for fmt in ("JPEG", "WEBP"):
            tic = time.perf_counter()
            j = images.jpeg_at_size(image, r["bytes"], fmt)
            yield {"image": name, "codec": fmt.lower(), "setting": f"q={j['quality']}",
                   "bytes": j["bytes"], "bpp": j["bpp"], "psnr": j["psnr"], "ssim": j["ssim"],
                   "encode_s": time.perf_counter() - tic, "decode_s": 0.0}
          if self.siren and bits in (self.siren_bits or self.bits):
            yield self.siren_row(name, path, image, r["bytes"])

  def run(self, names: list[str]) -> list[dict]:
    """Every row of the study, written to out_dir/rd.csv as it comes; then the report."""
    os.makedirs(os.path.join(self.out_dir, "files"), exist_ok=True)
    open(os.path.join(self.out_dir, "fits.csv"), "w").close()  # Rewritten, like rd.csv, each study.
    rows = []
    with open(os.path.join(self.out_dir, "rd.csv"), "w", newline="") as f:
      writer = csv.DictWriter(f, fieldnames=FIELDS)
      writer.writeheader()
      for group in groups(names, self.out_dir):
        for row in self.rows_for(group):
          row = {k: row[k] for k in FIELDS}
          writer.writerow(row)
          f.flush()
          rows.append(row)
          print(f"{row['image']:>10} {row['codec']:>10} {row['setting']:>12} {row['bytes']:>8,} B "
                f"{row['bpp']:.3f} bpp {row['psnr']:.2f} dB", flush=True)
    report(rows, self.out_dir)
    return rows


def siren_hidden_for(nbytes: int, channels: int, layers: int = 5) -> int:
  """Largest hidden width whose fp16 SIREN fits in nbytes."""
  hidden = 4
  while 2 * siren.num_params(hidden + 1, layers, channels) <= nbytes:
    hidden += 1
  return hidden


def groups(names: list[str], out_dir: str) -> list[list]:
  """(label, path, image) per image, grouped by channel count (fitted together)."""
  by_channels = {}
  for name in names:
    path = photos.path(name, out_dir)
    image = images.load_image(path)
    label = os.path.splitext(os.path.basename(name))[0]
    by_channels.setdefault(image.shape[2], []).append((label, path, image))
  return list(by_channels.values())


def report(rows, out_dir: str) -> None:
  """rd.png and summary.md (the per-setting means, printed too) from the rows."""
  if not rows:
    return
  rate_distortion.plot(rows, os.path.join(out_dir, "rd.png"))
  table = rate_distortion.summarize(rows)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(table)
  print(table)
  print(f"wrote {os.path.join(out_dir, 'rd.csv')}, rd.png and summary.md in {out_dir}")
