"""Calling a model on many inputs: fixed-size batches and one compilation per model
structure, shared by the generator evaluation and the feature extractors."""
from __future__ import annotations

import functools

import jax
import numpy as np
from flax import nnx


def in_batches(fn, array: np.ndarray, batch: int = 256) -> np.ndarray:
  """fn over `array` in batches of exactly `batch` rows (the last one padded), so that a
  jitted fn compiles once whatever len(array) is."""
  out = []
  for i in range(0, len(array), batch):
    chunk = array[i:i + batch]
    pad = batch - len(chunk)
    if pad:
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], pad, axis=0)])
    out.append(np.asarray(fn(chunk))[:batch - pad])
  return np.concatenate(out)


@functools.lru_cache(maxsize=32)
def jitted_method(graphdef, method: str):
  return jax.jit(lambda state, x, *args: getattr(nnx.merge(graphdef, state), method)(x, *args))


def compiled(model, method: str, *args):
  """x -> model.method(x, *args) with the model's current state. The state and args are
  arguments of the jitted function (not constants baked into the program), and the
  function is cached by the model's structure (its graphdef, which holds no arrays):
  evaluation's many calls (reconstructions, grids, FID samples) share one compilation."""
  graphdef, state = nnx.split(model)
  fn = jitted_method(graphdef, method)
  return lambda x: fn(state, x, *args)
