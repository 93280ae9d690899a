"""`--set KEY=VALUE`: the same change to `compress.py:best` for every fit of a benchmark
(studies.stability, studies.panel, experiments.rd), so two recipes can be compared
cell by cell without editing the config file. Each fit applies the parsed settings with
ml_collections' `config.update_from_flattened_dict`.

The settings are checked once, before any fit, and recorded in OUT/settings.json: a
directory holds the fits of one recipe, and a later command that would add fits of
another (other --set, or none where there were some) is refused in one line, since its
table would mix the two.
"""
from __future__ import annotations

import ast
import json
import os

import ml_collections

from dfm_flax.errors import UserError
from experiments.cli import fail
from experiments.compress import get_config

RECORD = "settings.json"


def parse(pairs: list[str]) -> dict:
  """KEY=VALUE pairs -> {KEY: value}, KEY a SECTION.NAME of compress.py:best, VALUE as
  Python reads it unless that setting is a string (bool("False") would be True)."""
  c, overrides = get_config("best"), {}
  for pair in pairs:
    key, sep, value = pair.partition("=")
    section, _, name = key.partition(".")
    if not sep or section not in c or not isinstance(c[section], ml_collections.ConfigDict) \
        or name not in c[section]:
      raise UserError(f"--set {pair}: want KEY=VALUE with KEY a setting of compress.py:best, "
                      f"e.g. optim.b1=0.95")
    if isinstance(c[section][name], str):
      overrides[key] = value
      continue
    try:
      overrides[key] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      raise UserError(f"--set {pair}: not a number, tuple or True/False") from None
  return overrides


def _plain(overrides: dict) -> dict:
  return json.loads(json.dumps(overrides))  # Tuples read back as lists.


def recorded(out: str, pairs: list[str]) -> dict:
  """parse(pairs), checked against the settings OUT's fits were made with (the first
  command in OUT records them)."""
  overrides = parse(pairs)
  path = os.path.join(out, RECORD)
  if os.path.exists(path):
    with open(path) as f:
      before = json.load(f)
    if before != _plain(overrides):
      raise UserError(f"{out} holds fits made with --set {_describe(before)}; this command has "
                      f"--set {_describe(overrides)}: use another --out, or the same settings")
  else:
    os.makedirs(out, exist_ok=True)
    with open(path, "w") as f:
      json.dump(_plain(overrides), f, indent=1)
  return overrides


def for_command(out: str, pairs: list[str], report_only: bool) -> dict:
  """recorded(out, pairs) for a benchmark's main: bad settings are one `error:` line and
  exit code 2, before any fit; a --report (no fits) needs none."""
  if report_only:
    return {}
  try:
    return recorded(out, pairs)
  except UserError as e:
    fail(str(e), 2)


def _describe(overrides: dict) -> str:
  return " ".join(f"{k}={v}" for k, v in overrides.items()) or "(none)"
