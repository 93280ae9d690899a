"""Sample from a trained generator (DFM or the VAE baseline), from its checkpoint alone.

  python -m experiments.sample --workdir DIR --out FILE.png [--num N] [--prior gaussian|gmm]
                               [--interpolate K] [--seed S]

Writes FILE.png (N samples from the prior), FILE_reconstructions.png (originals kept
with the run beside their reconstructions) and FILE_interpolations.png (rows of K
images walking between pairs of training latents). No data is read and no training
code runs: the model is rebuilt from DIR/config.json and the checkpoint.
"""
import os

import jax.numpy as jnp
import numpy as np
from absl import app, flags

from dfm_flax.errors import UserError
from dfm_flax.evaluation import generators
from dfm_flax.loop.restore import load_model
from experiments.cli import parse_flags, run_main

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished run of a generator (mnist, cifar10, vae_mnist).")
_OUT = flags.DEFINE_string("out", None, "Output PNG for the sample grid.")
_NUM = flags.DEFINE_integer("num", 64, "Number of samples.", lower_bound=1, upper_bound=4096)
_PRIOR = flags.DEFINE_enum("prior", "gmm", ["gaussian", "gmm"], "Prior on z (fitted after training).")
_INTERP = flags.DEFINE_integer("interpolate", 10, "Images per interpolation row (0: none).",
                               lower_bound=0, upper_bound=64)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the sampled latents.")
flags.mark_flags_as_required(["workdir", "out"])


def _sample(_):

  out = _OUT.value
  if not out.lower().endswith(".png"):
    raise UserError(f"--out must name a .png file, got {out}")
  if os.path.dirname(out) and not os.path.isdir(os.path.dirname(out)):
    raise UserError(f"the directory of --out does not exist: {os.path.dirname(out)}")
  config, meta, model = load_model(_WORKDIR.value)
  if config.task not in ("generate", "vae"):
    raise UserError(f"{_WORKDIR.value} holds a {config.task!r} run; sampling needs a generator "
                    f"(experiments/mnist.py, cifar10.py or vae_mnist.py)")
  shape = tuple(meta["image_shape"])
  coords = generators.generator_coords(config, shape)
  priors = generators.load_priors(_WORKDIR.value)
  generators.write_samples(model, priors, _PRIOR.value, _NUM.value, _SEED.value, coords, shape, out)
  written = [out]

  originals, index = _originals(_WORKDIR.value)
  latents = (np.asarray(model.latents[...])[index] if hasattr(model, "latents")
             else np.asarray(model.encode({"image": jnp.asarray(originals)})))
  stem = out[:-4]
  rec = generators.render_latents(model, latents[:32], coords, shape)
  generators.write_reconstructions(originals, rec, f"{stem}_reconstructions.png")
  written.append(f"{stem}_reconstructions.png")
  if _INTERP.value:
    generators.write_interpolations(model, latents, coords, shape, _INTERP.value,
                                    f"{stem}_interpolations.png")
    written.append(f"{stem}_interpolations.png")
  print("wrote " + ", ".join(written))


def _originals(workdir):
  path = os.path.join(workdir, "originals.npz")
  if not os.path.exists(path):
    raise UserError(f"no originals.npz in {workdir}: the run has not finished its evaluation")
  with np.load(path) as f:
    return f["images"].astype(np.float32) / 255.0, f["index"]


def main(argv):
  run_main(_sample, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
