"""Shared command-line plumbing: one clear stderr line and a non-zero exit for bad input."""
from __future__ import annotations

import ast
import glob
import os
import re
import sys

from absl import flags, logging

from dfm_flax.errors import UserError


def fail(message: str, code: int = 1):
  print(f"error: {message}", file=sys.stderr)
  sys.exit(code)


HELP_FLAGS = ("--help", "-h", "--helpshort", "--helpfull", "-?")


def parse_flags(argv):
  """absl flag parsing whose errors (unknown config key, bad value) are one line, and whose
  --help exits 0 (absl's exits 1, which scripts read as a failure)."""
  try:
    return flags.FLAGS(argv)
  except SystemExit:
    if any(a in HELP_FLAGS for a in argv[1:]):
      sys.exit(0)
    raise
  except (AttributeError, KeyError) as e:  # ml_collections: a key the config lacks.
    text = str(e).replace("\\", "")
    found = re.search(r"'([A-Za-z_]\w*)'", text)
    key = found.group(1) if found else text
    culprit = next((a for a in argv if a.startswith("--config.") and key in a), key)
    hint = re.search(r'Did you mean "(\w+)"', text)
    fail(f"unknown config key in {culprit}" + (f" (did you mean {hint.group(1)!r}?)" if hint else ""), 2)
  except SyntaxError as e:  # a config file that does not parse
    fail(f"config file {e.filename} line {e.lineno}: {e.msg}", 2)
  except (flags.Error, ValueError, TypeError) as e:
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    # A config file that raised: its own message is the last line of the traceback.
    fail((lines[-1] if "Traceback" in str(e) else " ".join(lines)) or type(e).__name__, 2)
  except Exception as e:  # noqa: BLE001  a config file's get_config raised something else
    fail(f"the config file raised {type(e).__name__}: {e}", 2)


def run_main(fn, argv) -> None:
  """Run fn(argv), turning UserError into one stderr line and its exit code
  (DFM_DEBUG=1 prints the traceback first)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  logging.set_verbosity(logging.ERROR)  # orbax logs every save at INFO, tfds warns of mock metadata.
  try:
    fn(argv)
  except UserError as e:
    if os.environ.get("DFM_DEBUG"):  # The traceback, and the exception behind the message.
      import traceback
      traceback.print_exception(e)
    fail(str(e), e.exit_code)
  except KeyboardInterrupt:  # Ctrl-C outside the train loop's own handling: files are atomic
    fail("interrupted; what was written is kept: rerun the same command to go on", 130)


def config_value(holder):
  """The parsed config, or one clear line if its file could not be loaded."""
  config = holder.value
  try:
    config.to_dict()
    return config
  except OSError as e:  # config_flags defers a missing-file error to first use.
    lines = [line.strip() for line in str(e).splitlines() if line.strip()]
    fail(f"cannot load config: {lines[-1] if lines else e}", 2)


EXPERIMENTS_DIR = os.path.dirname(os.path.abspath(__file__))


def config_variants(path: str) -> dict[str, str] | None:
  """A config file's VARIANTS (variant -> what it is), read without running the file;
  None for a file that is not an experiment config."""
  with open(path) as f:
    tree = ast.parse(f.read(), path)
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "VARIANTS" for t in node.targets):
      return ast.literal_eval(node.value)
  return None


def experiment_configs(directory: str = EXPERIMENTS_DIR) -> dict[str, dict[str, str]]:
  """Every experiment config file in `directory` (by file name) and its variants."""
  found = {}
  for path in sorted(glob.glob(os.path.join(directory, "*.py"))):
    variants = config_variants(path)
    if variants is not None:
      found[os.path.basename(path)] = variants
  return found


def variants_help() -> str:
  """The experiments and their variants, for --help."""
  lines = []
  for name, variants in experiment_configs().items():
    named = [v for v in variants if v]
    lines.append(f"experiments/{name}" + (f" ({', '.join(named)})" if named else ""))
  return "; ".join(lines)
