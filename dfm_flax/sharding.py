"""Device mesh and shardings for the shared train loop (jax.jit + NamedSharding).

config.mesh.data: size of the `data` mesh axis (-1: all devices). The batch is split
over it along its first axis (images for generation, pixels for compression);
parameters and optimizer state are replicated, except the auto-decoder's latent
table, which is split over `data` along its rows when config.mesh.shard_latents is
true. The axis is of type Auto, so XLA inserts the gradient all-reduce itself and a
step computes the same global-batch mean as on one device.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from dfm_flax.errors import UserError


def make_mesh(mesh_cfg) -> Mesh:
  devices = jax.devices()
  size = mesh_cfg.data if mesh_cfg.data > 0 else len(devices)
  if size > len(devices):
    raise UserError(f"mesh.data={size} but only {len(devices)} devices are visible "
                    f"({devices[0].platform})")
  return jax.make_mesh((size,), ("data",), axis_types=(AxisType.Auto,), devices=devices[:size])


def shard_batch(batch, mesh: Mesh):
  """Split every array with a leading batch axis over `data`; replicate the rest."""
  n = mesh.shape["data"]

  def put(x):
    if not hasattr(x, "ndim") or x.ndim == 0 or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.device_put(x, NamedSharding(mesh, P()))
    if x.shape[0] % n:
      raise UserError(f"a batch of {x.shape[0]} (train.batch_size) does not divide over {n} "
                      f"devices; use a multiple of {n}, or --config.mesh.data=1")
    return jax.device_put(x, NamedSharding(mesh, P("data")))
  if n == 1:
    return batch
  return jax.tree.map(put, batch)


def state_shardings(state, mesh: Mesh, shard_latents: bool):
  """Replicated everywhere, except (optionally) rows of the latent table over `data`."""
  n = mesh.shape["data"]

  def spec(path, x):
    names = {str(getattr(k, "key", getattr(k, "name", ""))) for k in path}
    if shard_latents and "latents" in names and getattr(x, "ndim", 0) == 2 and x.shape[0] % n == 0:
      return NamedSharding(mesh, P("data"))
    return NamedSharding(mesh, P())
  return jax.tree_util.tree_map_with_path(spec, state)


def place(state, mesh: Mesh, shard_latents: bool = False):
  return jax.device_put(state, state_shardings(state, mesh, shard_latents))


def describe(mesh: Mesh) -> str:
  d = np.asarray(mesh.devices).ravel()
  return f"{len(d)} x {d[0].platform} ({d[0].device_kind})"
