"""Train and evaluate one experiment config.

  python -m experiments.run --config experiments/NAME.py[:VARIANT] --workdir DIR [--config.KEY=VALUE ...]

Rerunning the same command resumes from the last checkpoint; a finished run is not redone.
"""
from absl import app, flags
from ml_collections import config_flags

from experiments.cli import config_value, parse_flags, run_main

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file[:variant].",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and figures.")
flags.mark_flags_as_required(["config", "workdir"])


def _train(_):
  from dfm_flax.train import train_and_evaluate  # Heavy imports after flag parsing.
  metrics = train_and_evaluate(config_value(_CONFIG), _WORKDIR.value)
  summary = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
  print(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                 for k, v in summary.items()))


def main(argv):
  run_main(_train, argv)


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
