"""One script that measures an accelerator (or the CPU): precision and throughput.

  python -m benchmarks.gpu_check [--out runs/gpu_check] [--quick]

Prints, and writes as OUT/gpu_check.json and OUT/gpu_check.md:
  * device and jax version;
  * the largest phase error of one layer (k.x for all k) and the largest pixel error of a
    whole net (8x6, realistic weights), in float32 on this device, against float64 numpy;
  * steps/s of compress.py:best for 1 image and for 16 and 64 images fitted at once
    (one net per image, vmapped), and images/s for a 10,000-step fit;
  * images/s of mnist.py:best training (the bundled digits);
  * forward+backward pixels/s of one layer, product vs direct form, widths 4-10;
  * peak device memory (the device's own counter; on a CPU, the process's peak RSS).
--quick (what the test runs, and the default on a CPU) uses smaller stacks and fewer
timed steps. Under 5 minutes on one GPU; a few minutes on 2 CPU cores with --quick.
"""
import argparse
import json
import os
import resource
import statistics
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.batch_compress import crops
from benchmarks.fourier_layer import step_fn, time_once
from benchmarks.scaling import measure
from dfm_flax.nets import fourier, reference
from experiments import compress, mnist


def precision_errors(seed: int = 0) -> dict:
  """Phase and pixel errors of float32 on this device against a float64 reference."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-2, 2, (4096, 8)).astype(np.float32)
  got = np.asarray(jax.jit(fourier.phases)(jnp.asarray(x)), np.float64)
  ref = x.astype(np.float64) @ fourier.frequencies(8).astype(np.float64).T
  phase_err = float(np.max(np.abs(2 * np.pi * (got - ref))))
  coords = rng.uniform(0, 0.5, (4096, 2)).astype(np.float32)
  # Weights at a trained net's scale (std 0.3 / 2^(m/2)): much larger ones make a deep
  # net chaotic, where any two float32 evaluations differ.
  params = [((rng.normal(0, 0.3, (2**m, n)) / 2**(m / 2)).astype(np.float32),
             (rng.normal(0, 0.3, (2**m, n)) / 2**(m / 2)).astype(np.float32))
            for m, n in fourier.layer_dims(8, 6, 3)]
  pixels = {}
  for method in ("product", "direct"):
    out = jax.jit(lambda p, c: fourier.net_apply(p, c, method))(params, jnp.asarray(coords))
    pixels[method] = np.asarray(out, np.float64)
  ref_px = reference.net(params, coords)
  # Pixels in [-1, 1]: one 8-bit level is 2/255.
  return {"phase_max_err_rad": phase_err,
          **{f"pixel_max_err_levels_{m}": float(np.max(np.abs(p - ref_px)) * 255 / 2)
             for m, p in pixels.items()}}


def compress_rates(stacks, steps: int, repeats: int) -> dict:
  out = {}
  with tempfile.TemporaryDirectory() as tmp:
    paths = crops(max(stacks), 256, tmp)
    for n in stacks:
      config = compress.get_config("best")
      config.image = ",".join(paths[:n])
      rate = measure(config, 1, steps, repeats)
      out[n] = {"steps_per_s": rate, "images_per_s_10k_fits": rate * n / config.train.steps}
  return out


def mnist_rate(steps: int, repeats: int) -> float:
  config = mnist.get_config("best")
  config.data = mnist.get_config("smoke").data
  return measure(config, 1, steps, repeats) * config.train.batch_size


def layer_rates(widths, points: int, repeats: int) -> dict:
  out = {}
  for width in widths:
    key = jax.random.key(width)
    x = jax.random.uniform(key, (points, width))
    a = jax.random.normal(jax.random.fold_in(key, 1), (2**width, width)) / 2**(width / 2)
    b = jax.random.normal(jax.random.fold_in(key, 2), (2**width, width)) / 2**(width / 2)
    fns = {m: step_fn(m) for m in ("direct", "product")}
    for fn in fns.values():
      time_once(fn, a, b, x)
    times = {m: [time_once(fn, a, b, x) for _ in range(repeats)] for m, fn in fns.items()}
    out[width] = {m: points / statistics.median(t) for m, t in times.items()}
  return out


def peak_memory_mib() -> float:
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return stats["peak_bytes_in_use"] / 2**20
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # CPU: peak RSS.


def markdown(r: dict) -> str:
  lines = [f"device: {r['device']} (jax {r['jax']}, {r['mode']})", "",
           "| check | value |", "|---|---|",
           f"| phase max error (float32 vs float64) | {r['precision']['phase_max_err_rad']:.2e} rad |"]
  for k, v in r["precision"].items():
    if k.startswith("pixel"):
      lines.append(f"| net pixel max error, {k.rsplit('_', 1)[1]} form | {v:.4f} 8-bit levels |")
  for n, c in r["compress"].items():
    lines.append(f"| compress.py:best, {n} image(s) at once | {c['steps_per_s']:.1f} steps/s, "
                 f"{c['images_per_s_10k_fits']:.4f} images/s (10k-step fits) |")
  lines.append(f"| mnist.py:best training | {r['mnist_images_per_s']:,.0f} images/s |")
  for w, t in r["layer"].items():
    lines.append(f"| layer width {w}: product / direct px/s | {t['product']:,.0f} / "
                 f"{t['direct']:,.0f} ({t['product'] / t['direct']:.2f}x) |")
  lines.append(f"| peak memory | {r['peak_memory_mib']:,.0f} MiB |")
  return "\n".join(lines) + "\n"


def main():
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--out", default="runs/gpu_check")
  p.add_argument("--quick", action="store_true", help="smaller sizes (default on a CPU)")
  a = p.parse_args()
  quick = a.quick or jax.default_backend() == "cpu"
  tic = time.perf_counter()
  r = {"device": f"{jax.devices()[0].device_kind} ({jax.default_backend()})",
       "jax": jax.__version__, "mode": "quick" if quick else "full",
       "precision": precision_errors()}
  print(json.dumps({"precision": r["precision"]}), flush=True)
  r["compress"] = compress_rates((1, 2, 4) if quick else (1, 16, 64), 5 if quick else 50,
                                 3 if quick else 5)
  r["mnist_images_per_s"] = mnist_rate(5 if quick else 50, 3 if quick else 5)
  r["layer"] = layer_rates((4, 6) if quick else (4, 5, 6, 7, 8, 9, 10),
                           2**12 if quick else 2**16, 3 if quick else 7)
  r["peak_memory_mib"] = peak_memory_mib()
  r["seconds"] = time.perf_counter() - tic
  os.makedirs(a.out, exist_ok=True)
  with open(os.path.join(a.out, "gpu_check.json"), "w") as f:
    json.dump(r, f, indent=2, default=str)
  text = markdown(r)
  with open(os.path.join(a.out, "gpu_check.md"), "w") as f:
    f.write(text)
  print(text + f"({r['seconds']:.0f} s)")


if __name__ == "__main__":
  main()
