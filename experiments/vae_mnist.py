"""Baseline for experiments/mnist.py: an MLP VAE of comparable size, same loop, same scoring.

  python -m experiments.run --config experiments/vae_mnist.py --workdir runs/vae \\
      --config.data.source=idx --config.data.dir=../shared/data/mnist \\
      --config.eval.classifier_dir=runs/classifier

"""
import ml_collections

from experiments import common

VARIANTS = {
    "": "the full run",
    "smoke": "the 1,000 bundled digits, a few steps: checks the pipeline (< 60 s)",
}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  common.check_variant("vae_mnist.py", variant, VARIANTS)
  c = ml_collections.ConfigDict()
  c.task = "vae"
  c.seed = 0
  c.data = common.data("tfds", "mnist", split="train+test")
  common.held_out(c)
  c.model = ml_collections.ConfigDict()
  c.model.hidden = (128,)  # 784-128-(2x16) encoder, 16-128-784 decoder
  c.model.latent_dim = 16
  c.model.activation = "relu"
  c.train = common.train(steps=20_000, batch_size=64)
  c.optim = common.adam(1e-3, "linear", end_lr=1e-5)
  c.eval = common.evaluation(fid_samples=10_000)
  c.guard = common.guard("recover")  # roll back and lower the lr on a collapse
  c.wandb = common.wandb()
  c.mesh = common.mesh()
  c.dist = common.dist()  # Multi-process runs: SLURM or experiments.launch.
  if variant == "smoke":
    common.mnist_smoke(c)
  return c
