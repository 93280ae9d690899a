"""Images/s when many images are fitted at once (one stack of nets, vmapped) vs one by one.

  python -m benchmarks.batch_compress [--config experiments/compress.py:best]
      [--width 6 --depth 6] [--images 1,4,16] [--size 256] [--steps 20] [--repeats 5]

Each of N random `size`x`size` crops of the built-in photographs gets its own net; a
stack of N nets trains all of them in one step. Prints the median time per training
step over `repeats` timings of `steps` steps, and the images/s this gives for a full
fit of the config's train.steps (compile time excluded), against N=1 in the same run.
"""
import argparse
import os
import tempfile

import jax
import numpy as np
from PIL import Image

from benchmarks.scaling import load_config, measure


def crops(n: int, size: int, directory: str) -> list[str]:
  """n random size x size RGB crops of skimage's photographs, as PNG files."""
  import skimage.data
  photos = [skimage.data.coffee(), skimage.data.astronaut(), skimage.data.chelsea()]
  rng = np.random.default_rng(0)
  paths = []
  for i in range(n):
    photo = photos[i % len(photos)]
    y, x = (rng.integers(0, d - size + 1) for d in photo.shape[:2])
    paths.append(os.path.join(directory, f"{i}.png"))
    Image.fromarray(photo[y:y + size, x:x + size]).save(paths[-1])
  return paths


def main():
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", default="experiments/compress.py:best")
  p.add_argument("--width", type=int, default=6)
  p.add_argument("--depth", type=int, default=6)
  p.add_argument("--images", default="1,4,16")
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--steps", type=int, default=20)
  p.add_argument("--repeats", type=int, default=5)
  args = p.parse_args()
  base = load_config(args.config)
  base.model.width, base.model.depth, base.train.quiet = args.width, args.depth, True
  counts = [int(n) for n in args.images.split(",")]
  print(f"{args.config} at {args.width}x{args.depth}, {base.train.batch_size} pixels per image "
        f"per step, {base.train.steps} steps per fit, {args.size}x{args.size} crops, "
        f"{jax.devices()[0].platform} ({len(jax.devices())} device(s)), median of {args.repeats}")
  print(f"{'images':>6} {'ms/step':>9} {'images/s':>9} {'s/image':>8} {'vs 1':>6}")
  with tempfile.TemporaryDirectory() as tmp:
    paths = crops(max(counts), args.size, tmp)
    single = None
    for n in counts:
      config = base.copy_and_resolve_references()
      config.image = ",".join(paths[:n])
      per_step = 1 / measure(config, 1, args.steps, args.repeats)
      rate = n / (per_step * base.train.steps)
      single = single or (rate if n == 1 else None)
      print(f"{n:>6} {1e3 * per_step:>9.2f} {rate:>9.4f} {1 / rate:>8.1f} "
            f"{rate / single if single else float('nan'):>5.2f}x", flush=True)


if __name__ == "__main__":
  main()
