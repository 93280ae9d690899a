"""Train and evaluate one experiment config.

  python -m experiments.run --config experiments/NAME.py[:VARIANT] --workdir DIR [--config.KEY=VALUE ...]

Rerunning the same command resumes from the last checkpoint; a finished run is not redone.
Several processes (several servers) run one job when started by SLURM (`srun python -m
experiments.run ...`, see experiments/slurm.sbatch) or with --config.dist.coordinator,
--config.dist.num_processes and --config.dist.process_id (python -m experiments.launch
starts N such processes on this machine).
"""
import re

from absl import app, flags
from ml_collections import config_flags

from dfm_flax.errors import UserError
from dfm_flax.parallel import distributed
from experiments.cli import config_value, parse_flags, run_main, variants_help

_CONFIG_HELP = (
    "Experiment config file[:variant] (no variant: the default settings). " + variants_help()
    + ". Each variant is described in its file's VARIANTS. Main keys (--config.KEY=VALUE): "
    "seed, image (compress: a path, or several joined by commas), model.width, model.depth, "
    "train.steps, train.stop_at, train.batch_size, optim.lr, data.source "
    "(tfds|idx|cifar_pickle|folder|npz|photos), data.dir, data.classes, guard.mode "
    "(recover|detect|off), wandb.mode.")
_CONFIG = config_flags.DEFINE_config_file("config", None, _CONFIG_HELP, lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
flags.mark_flags_as_required(["config", "workdir"])


def expand_workdir(template: str, config) -> str:
  """Fill {KEY} placeholders from the config: runs/w{model.width}_s{seed} -> runs/w8_s0.

  W&B sweep agents append the swept flags to one command line, so the workdir of
  each run is named from its own settings.
  """

  def value(match):
    node = config
    for part in match.group(1).split("."):
      if part not in node:
        raise UserError(f"--workdir placeholder {{{match.group(1)}}} is not a config key")
      node = node[part]
    return str(node)
  return re.sub(r"\{([A-Za-z_][\w.]*)\}", value, template)


def _train(_):
  config = config_value(_CONFIG)
  distributed.initialize(config)  # Before jax touches a device; no-op for one process.
  from dfm_flax.loop.train import train_and_evaluate  # heavy imports after flag parsing
  metrics = train_and_evaluate(config, expand_workdir(_WORKDIR.value, config))
  distributed.finish()
  if not distributed.is_main():
    return
  summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
  print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in summary.items()))
  jpeg = metrics.get("jpeg")
  if isinstance(jpeg, dict) and "psnr" in metrics:  # The headline comparison, side by side.
    quality = jpeg.get("quality") or "1: no JPEG is this small"
    print(f"DFM  {metrics['psnr']:.2f} dB  SSIM {metrics['ssim']:.3f}  {metrics['bytes']:,} bytes\n"
          f"JPEG {jpeg['psnr']:.2f} dB  SSIM {jpeg['ssim']:.3f}  {jpeg['bytes']:,} bytes "
          f"(quality {quality})")


def main(argv):
  run_main(_train, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
