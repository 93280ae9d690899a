"""A plain float64 numpy Fourier layer and net: eq. 4.5 read literally, a loop over every
k in {0,1}^m. Independent of fourier.py (no doubling, no product form, no jax): the
yardstick the tests and benchmarks.gpu_check measure fourier.py against."""
from __future__ import annotations

import numpy as np


def layer(x, a, b) -> np.ndarray:
  """sum_k a_k cos(2 pi k.x) + b_k sin(2 pi k.x) (+ x when m == n); a, b: (2^m, n)."""
  x, a, b = (np.asarray(v, np.float64) for v in (x, a, b))
  m, n = x.shape[-1], a.shape[-1]
  out = np.zeros(x.shape[:-1] + (n,))
  for idx in range(2**m):
    k = np.array([(idx >> j) & 1 for j in range(m)], np.float64)  # k_j = bit j of idx.
    phase = 2 * np.pi * (x @ k)
    out += np.cos(phase)[..., None] * a[idx] + np.sin(phase)[..., None] * b[idx]
  if m == n:
    out += x
  return out


def net(params, coords) -> np.ndarray:
  """The Fourier Net: the layers of `params` ((a, b) per layer) composed, tanh on top."""
  h = np.asarray(coords, np.float64)
  for a, b in params:
    h = layer(h, a, b)
  return np.tanh(h)
