"""Small helpers with one home: atomic file writes, flattened dicts, config specs."""
from __future__ import annotations

import contextlib
import csv
import importlib.util
import os
import uuid

from dfm_flax.errors import UserError


@contextlib.contextmanager
def atomic_path(path: str, suffix: str = ".partial"):
  """Yields a temporary path beside `path`; on success it replaces `path` in one rename,
  on failure it is removed: readers see the old file or the new one, never half. The
  temporary name is unique, so that writers racing for one file (panel shards saving the
  same photograph) each finish and the last rename wins. (Not mkstemp: its files are
  private, 0600, and the rename would keep that.)"""
  _, ext = os.path.splitext(path)
  # Same extension at the end: writers that pick a format by it still can.
  tmp = f"{path}{suffix}-{uuid.uuid4().hex[:12]}{ext}"
  try:
    yield tmp
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_bytes(path: str, data: bytes) -> None:
  with atomic_path(path) as tmp, open(tmp, "wb") as f:
    f.write(data)


def write_csv(path: str, fields: list[str], rows: list[dict]) -> None:
  with atomic_path(path, ".tmp") as tmp, open(tmp, "w", newline="") as f:
    writer = csv.DictWriter(f, fields)
    writer.writeheader()
    writer.writerows(rows)


def flatten(d: dict, sep: str = ".", prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1} (with sep "/": "a/b")."""
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(flatten(v, sep, f"{prefix}{k}{sep}"))
    else:
      out[prefix + k] = v
  return out


def load_config(spec: str):
  """get_config(VARIANT) of the config file in "PATH[:VARIANT]"."""
  path, _, variant = spec.partition(":")
  if not os.path.exists(path):
    raise UserError(f"config file {path} does not exist")
  module_spec = importlib.util.spec_from_file_location("dfm_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant)
