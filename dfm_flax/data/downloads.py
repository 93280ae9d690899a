"""Getting a TFDS dataset that is not prepared yet, when the network allows.

TFDS reads prepared data without TensorFlow (`tfds.data_source`), but preparing needs
TensorFlow (its extractor). For the IDX datasets (MNIST and its kin) this fetches the same
files TFDS would, from TFDS's own URL list, checks them against TFDS's registered
SHA-256 sums, and reads them directly; other datasets are prepared by TFDS when
TensorFlow is installed. Before anything, each host is tried for a few seconds, so an
offline machine gets its one-line error at once instead of after minutes of retries.
"""
from __future__ import annotations

import hashlib
import os
import socket
import urllib.parse
import urllib.request

from dfm_flax import files
from dfm_flax.errors import UserError

IDX_DATASETS = ("mnist", "fashion_mnist", "kmnist")
_SPLIT_PREFIX = {"train": "train-", "test": "t10k-"}


def unreachable_host(urls, timeout_s: float = 5.0) -> str | None:
  """The first host of `urls` that does not accept a connection within timeout_s, or None."""
  for host, port in sorted({_host_port(u) for u in urls}):
    try:
      socket.create_connection((host, port), timeout=timeout_s).close()
    except OSError:
      return host
  return None


def _host_port(url: str) -> tuple[str, int]:
  parts = urllib.parse.urlsplit(url)
  return parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)


def fetch(url: str, path: str, sha256: str, timeout_s: float = 60.0) -> str:
  """Download url to path (kept if already there with the right sum), checking its SHA-256."""
  if os.path.exists(path) and _sha256(path) == sha256:
    return path
  print(f"downloading {url}", flush=True)
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  try:
    with files.atomic_path(path) as tmp:
      with urllib.request.urlopen(url, timeout=timeout_s) as response, open(tmp, "wb") as f:
        while chunk := response.read(1 << 20):
          f.write(chunk)
      if _sha256(tmp) != sha256:
        raise UserError(f"{url} downloaded with another SHA-256 than TFDS registers; not used")
  except OSError as e:  # urllib's URLError and timeouts are OSErrors.
    raise UserError(f"cannot download {url}: {e}") from e
  return path


def _sha256(path: str) -> str:
  h = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      h.update(chunk)
  return h.hexdigest()


def idx_files(url_sums: dict[str, str], split: str, directory: str) -> list[str]:
  """The IDX image files of `split` (train, test or train+test), fetched into directory;
  each one's labels file is fetched beside it. url_sums: URL -> SHA-256."""
  parts = split.replace(" ", "").split("+")
  if not parts or any(p not in _SPLIT_PREFIX for p in parts):
    raise UserError(f"split {split!r}: without TensorFlow the IDX files are read as train, "
                    f"test or train+test")
  images = []
  for url, sha in sorted(url_sums.items()):
    name = os.path.basename(urllib.parse.urlsplit(url).path)
    if any(name.startswith(_SPLIT_PREFIX[p]) for p in parts):
      path = fetch(url, os.path.join(directory, name), sha)
      if "images" in name:
        images.append(path)
  if not images:
    raise UserError(f"no IDX image file for split {split!r} among {', '.join(url_sums)}")
  return images
