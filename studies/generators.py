"""Samples of finished generator runs side by side, each titled with its classifier-FID
against the held-out digits (the comparison figure of docs/generation.md).

  python -m studies.generators --runs runs/dfm,runs/vae --labels "DFM,VAE" \
      --out docs/figures/mnist_generators.png [--num 64] [--prior gmm] [--seed 0]

Each run is restored from its checkpoint alone (as experiments.sample does); the samples
are drawn from the prior the run fitted after training, with the same seed for every run.
"""
import argparse
import json
import os

import numpy as np

from dfm_flax.errors import UserError
from dfm_flax.evaluation import figures, generators
from dfm_flax.loop.restore import load_model
from experiments.cli import run_main


def samples(workdir: str, prior: str, num: int, seed: int) -> np.ndarray:
  config, meta, model = load_model(workdir)
  if config.task not in ("generate", "vae"):
    raise UserError(f"{workdir} holds a {config.task!r} run, not a generator")
  shape = tuple(meta["image_shape"])
  priors = generators.load_priors(workdir)
  z = generators.sample_latents(priors, prior, num, priors["gmm_means"].shape[1], seed)
  return generators.render_latents(model, z, generators.generator_coords(config, shape), shape)


def title(workdir: str, label: str, prior: str) -> str:
  with open(os.path.join(workdir, "metrics.json")) as f:
    m = json.load(f)
  fid = (m.get("fid") or {}).get(f"classifier/{prior}")
  return label if fid is None else f"{label}\nclassifier-FID {fid:.1f}"


def _figure(_):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--runs", required=True, help="comma-separated run directories")
  p.add_argument("--labels", required=True, help="comma-separated titles, one per run")
  p.add_argument("--out", required=True)
  p.add_argument("--num", type=int, default=64)
  p.add_argument("--prior", choices=generators.PRIORS, default="gmm")
  p.add_argument("--seed", type=int, default=0)
  a = p.parse_args()
  runs, labels = a.runs.split(","), a.labels.split(",")
  if len(runs) != len(labels):
    p.error(f"{len(runs)} runs but {len(labels)} labels")
  cols = int(np.ceil(np.sqrt(a.num)))
  panels = [(figures.tile(samples(r, a.prior, a.num, a.seed), cols), title(r, lab, a.prior))
            for r, lab in zip(runs, labels)]
  figures.image_row(panels, a.out, suptitle=f"{a.num} samples each, {a.prior} prior")
  print(f"wrote {a.out}")


def main():
  run_main(_figure, None)  # A run that cannot be read: one line, not a traceback.


if __name__ == "__main__":
  main()
