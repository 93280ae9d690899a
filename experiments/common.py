"""Config pieces shared by the experiment files (each experiment stays one file)."""
import ml_collections

from dfm_flax.data.datasets import BUNDLED_MNIST
from dfm_flax.loop import guard as guard_lib


def wandb(mode: str = "auto") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"mode": mode, "project": "dfm", "entity": "", "name": ""})


def train(steps: int, batch_size: int, log_every: int = 100, checkpoint_every: int = 2000):
  """stop_at > 0 ends the run there, the lr schedule still spanning `steps`."""
  return ml_collections.ConfigDict({
      "steps": steps, "batch_size": batch_size, "log_every": log_every,
      "checkpoint_every": checkpoint_every, "quiet": False, "stop_at": 0})


def guard(mode: str = "recover") -> ml_collections.ConfigDict:
  """The divergence guard (dfm_flax/loop/guard.py): recover | detect | off."""
  c = guard_lib.defaults()
  c.mode = mode
  return c


def adam(lr: float, schedule: str = "constant", end_lr: float = 0.0) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "name": "adam", "lr": lr, "schedule": schedule, "warmup_steps": 0, "end_lr": end_lr,
      "b1": 0.9, "b2": 0.999, "grad_clip": 0.0})


def data(source: str, name: str = "", directory: str = "", split: str = "train",
         classes: str = "", limit: int = 0) -> ml_collections.ConfigDict:
  """data.source: tfds | idx | cifar_pickle | folder | npz | photos; data.dir: path."""
  return ml_collections.ConfigDict({
      "source": source, "name": name, "dir": directory, "split": split,
      "classes": classes, "limit": limit, "download": True})


def held_out(c: ml_collections.ConfigDict) -> None:
  """data.test_fraction: the last fraction of a fixed permutation of the images is never
  trained on; generators' FIDs are then measured against it, and the digit classifier
  given the same fraction is tested on the same images (datasets.split)."""
  c.data.test_fraction = 0.0


def bundled_mnist(limit: int = 0) -> ml_collections.ConfigDict:
  """The 1000 real MNIST digits that ship with the project (offline smoke runs)."""
  return data("npz", "mnist", BUNDLED_MNIST, limit=limit)


def evaluation(fid_samples: int, classifier_dir: str = "") -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({
      "gmm_components": 10, "recon_images": 1000, "fid_samples": fid_samples,
      "classifier_dir": classifier_dir, "inception_weights": ""})


def generative_model(width: int, depth: int, latent_dim: int, decoder_hidden: tuple,
                     encoder_hidden: tuple, init_variance: float, lam: float):
  """The generative DFM (dfm_flax/nets/generative.py): a decoder MLP from a latent to all
  weights of a width x depth Fourier net; an encoder MLP, or (encoder_hidden empty) a
  latent table. The latents start at init_variance too; lam weighs the prior (eq. 4.8)."""
  return ml_collections.ConfigDict({
      "width": width, "depth": depth, "method": "auto", "coord_range": (0.0, 1.0),
      "latent_dim": latent_dim, "decoder_hidden": decoder_hidden,
      "encoder_hidden": encoder_hidden, "activation": "relu", "init_variance": init_variance,
      "latent_init_variance": init_variance, "lam": lam})


def mesh(data: int = -1, shard_latents: bool = False) -> ml_collections.ConfigDict:
  """The device mesh: a `data` axis of `data` devices (-1: all) that splits each batch."""
  return ml_collections.ConfigDict({"data": data, "shard_latents": shard_latents})


def mnist_smoke(c: ml_collections.ConfigDict) -> None:
  """The smoke settings shared by the MNIST generators: bundled digits, 150 short steps."""
  c.data = bundled_mnist()
  held_out(c)
  c.train = train(steps=150, batch_size=32, log_every=25, checkpoint_every=50)
  c.eval = evaluation(fid_samples=500)
  c.eval.recon_images = 200
  c.wandb.mode = "disabled"


def dist() -> ml_collections.ConfigDict:
  """Multi-process runs (dfm_flax/parallel/distributed.py). Under SLURM (srun) nothing need be set;
  by hand, every process gets the same coordinator and num_processes and its own
  process_id (python -m experiments.launch does this on one machine)."""
  return ml_collections.ConfigDict({
      "coordinator": "",    # HOST:PORT of process 0.
      "num_processes": 1,
      "process_id": -1,
      "timeout_s": 120,     # To join the run and to find every other process started.
      "heartbeat_s": 30})   # A process silent this long is taken for dead: the others exit.


def check_variant(config_file: str, variant: str, variants: dict) -> None:
  """Refuse a variant that the config file's VARIANTS does not list."""
  if variant not in variants:
    known = ", ".join(v or "(none)" for v in variants)
    raise ValueError(f"unknown variant {variant!r} of {config_file}; known: {known}")
