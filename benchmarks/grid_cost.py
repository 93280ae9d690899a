"""What a Fig. 5.1 grid costs: the train step's time in every width x depth cell, and the
grid's training time projected from it.

  python -m benchmarks.grid_cost [--config experiments/compress.py:thesis] [--steps 4000]
      [--seeds 5] [--widths 2,4,6,8,10] [--depths 2,4,6,8,10] [--repeats 3]

Medians of --repeats timings of 5 steps each on the devices at hand (one core under
`taskset -c N`), after compilation. The projection is steps x seeds x the sum over cells;
each run's start-up and evaluation (seconds more per run) are not in it.
"""
import argparse

from benchmarks.scaling import measure
from dfm_flax.files import load_config


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", default="experiments/compress.py:thesis")
  p.add_argument("--steps", type=int, default=4000)
  p.add_argument("--seeds", type=int, default=5)
  p.add_argument("--widths", default="2,4,6,8,10")
  p.add_argument("--depths", default="2,4,6,8,10")
  p.add_argument("--repeats", type=int, default=3)
  a = p.parse_args(argv)
  widths = [int(w) for w in a.widths.split(",")]
  depths = [int(d) for d in a.depths.split(",")]
  ms = {}
  for w in widths:
    for d in depths:
      c = load_config(a.config)
      c.model.width, c.model.depth = w, d
      ms[(w, d)] = 1000 / measure(c, 1, 5, a.repeats)
      print(f"{w}x{d}: {ms[(w, d)]:.1f} ms/step", flush=True)
  print(f"\n{a.config}, ms per step (batch {c.train.batch_size:,}):")
  print("| depth \\ width | " + " | ".join(str(w) for w in widths) + " |")
  print("|---|" + "---|" * len(widths))
  for d in depths:
    print(f"| {d} | " + " | ".join(f"{ms[(w, d)]:.1f}" for w in widths) + " |")
  total = sum(ms.values()) / 1000 * a.steps * a.seeds
  print(f"\ngrid of {len(ms)} cells x {a.seeds} seeds x {a.steps:,} steps: {total:,.0f} s "
        f"({total / 3600:.1f} h) of training")


if __name__ == "__main__":
  main()
