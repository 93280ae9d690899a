"""Generative DFM on CIFAR-10 with an MLP encoder, thesis section 5.2.3.

Encoder 3072-1200-600-110, decoder 110-500-1000-(Fourier Net weights); Fourier Net
width 6, depth 10 (6576 weights by eq. 4.5); lambda 200; Adam, decoder lr linear
1e-3 -> 1e-7, encoder lr 10x -> 1000x smaller (1e-4 -> 1e-10); batch 512;
init N(0, 3e-2).

  # from prepared TFDS data (needs network once to prepare it):
  python -m experiments.run --config experiments/cifar10.py --workdir runs/cifar10
  # from the python pickle batches (cifar-10-batches-py):
  python -m experiments.run --config experiments/cifar10.py --workdir runs/cifar10 \\
      --config.data.source=cifar_pickle --config.data.dir=/data/cifar-10-batches-py
  # FID with Inception-v3 (pytorch-fid weights file):
  #   --config.eval.inception_weights=/path/pt_inception-2015-12-05-6726825d.pth

"""
import ml_collections

from experiments import common

VARIANTS = {
    "": "the thesis's settings (no better ones have been measured on CIFAR-10)",
    "thesis": "the same as the default",
    "adjusted": "the thesis's settings with the changes that make the MNIST default train "
                "(init 2e-3, half-period coordinates, lambda 1e-3, encoder lr 3e-4, the guard "
                "recovering); untuned on CIFAR-10",
    "smoke": "256 built-in 32x32 photo crops, a small net: checks the pipeline (< 60 s)",
}


def get_config(variant: str = "") -> ml_collections.ConfigDict:
  common.check_variant("cifar10.py", variant, VARIANTS)
  c = ml_collections.ConfigDict()
  c.task = "generate"
  c.seed = 0
  c.data = common.data("tfds", "cifar10", split="train")
  common.held_out(c)

  c.model = common.generative_model(width=6, depth=10, latent_dim=110, decoder_hidden=(500, 1000),
                                    encoder_hidden=(1200, 600), init_variance=3e-2, lam=200.0)

  c.train = common.train(steps=50_000, batch_size=512)
  c.optim = common.adam(1e-3, "linear", end_lr=1e-7)
  c.optim.groups = ml_collections.ConfigDict({"latent": {"lr": 1e-4, "end_lr": 1e-10}})
  c.optim.sparse_latents = False  # an encoder: no latent table
  c.eval = common.evaluation(fid_samples=10_000)
  c.guard = common.guard("detect")  # thesis settings: report a collapse, never intervene
  c.wandb = common.wandb()
  c.mesh = common.mesh()
  c.dist = common.dist()  # Multi-process runs: SLURM or experiments.launch.

  if variant == "adjusted":
    # The thesis's settings diverge at step 2 (docs/reproduction.md): the encoder's first
    # latents have |z|^2 near 5e5, which lambda 200 turns into a loss near 1e8.
    c.model.init_variance = c.model.latent_init_variance = 2e-3
    c.model.coord_range = (0.0, 0.5)
    c.model.lam = 1e-3
    c.optim.groups.latent.lr, c.optim.groups.latent.end_lr = 3e-4, 3e-8
    c.guard.mode = "recover"
  if variant == "smoke":
    c.data = common.data("photos", limit=256)
    common.held_out(c)
    c.model.depth = 4
    c.model.decoder_hidden = (64, 128)
    c.model.encoder_hidden = (128, 64)
    c.train = common.train(steps=40, batch_size=32, log_every=10, checkpoint_every=20)
    c.eval = common.evaluation(fid_samples=128)
    c.eval.recon_images = 64
    c.wandb.mode = "disabled"
  return c
