"""A small CNN digit classifier; its penultimate features give the offline classifier-FID.

  python -m experiments.run --config experiments/classifier_mnist.py --workdir runs/classifier \\
      --config.data.source=idx --config.data.dir=../shared/data/mnist

20% of the digits (a seeded split) are held out; metrics.json reports test accuracy.
"""
import ml_collections

from experiments import common

VARIANTS = {
    "": "the full run",
    "smoke": "the 1,000 bundled digits, a few steps: checks the pipeline (< 60 s)",
}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  common.check_variant("classifier_mnist.py", variant, VARIANTS)
  c = ml_collections.ConfigDict()
  c.task = "classify"
  c.seed = 0
  c.data = common.data("tfds", "mnist", split="train+test")
  c.data.test_fraction = 0.2
  c.model = ml_collections.ConfigDict({"features": 128})
  c.train = common.train(steps=3000, batch_size=128, log_every=100, checkpoint_every=1000)
  c.optim = common.adam(1e-3, "cosine")
  c.guard = common.guard("recover")  # roll back and lower the lr on a collapse
  c.wandb = common.wandb()
  c.mesh = common.mesh()
  c.dist = common.dist()  # Multi-process runs: SLURM or experiments.launch.
  if variant == "smoke":
    c.data = common.bundled_mnist()
    c.data.test_fraction = 0.2
    c.train = common.train(steps=120, batch_size=64, log_every=20, checkpoint_every=60)
    c.wandb.mode = "disabled"
  return c
