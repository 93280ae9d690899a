"""Device mesh and shardings for the shared train loop (jax.jit + NamedSharding).

config.mesh.data: size of the `data` mesh axis (-1: all devices, of all processes in
a multi-process run). The batch is split over it along its first axis (images for
generation, pixels for compression); each process builds only its own rows of it;
parameters and optimizer state are replicated, except the auto-decoder's latent
table, which is split over `data` along its rows when config.mesh.shard_latents is
true. The axis is of type Auto, so XLA inserts the gradient all-reduce itself and a
step computes the same global-batch mean as on one device.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dfm_flax.errors import UserError


def make_mesh(mesh_cfg) -> Mesh:
  devices = jax.devices()
  size = mesh_cfg.data if mesh_cfg.data > 0 else len(devices)
  if size > len(devices):
    raise UserError(f"mesh.data={size} but only {len(devices)} devices are visible "
                    f"({devices[0].platform})")
  if jax.process_count() > 1 and size != len(devices):
    raise UserError(f"mesh.data={size}: a run of {jax.process_count()} processes uses all "
                    f"{len(devices)} devices; leave mesh.data at -1")
  return jax.make_mesh((size,), ("data",), axis_types=(AxisType.Auto,), devices=devices[:size])


def process_rows(rows: int, mesh: Mesh) -> tuple[int, int]:
  """(start, stop): the rows of a batch of `rows` that this process's devices hold."""
  n = mesh.shape["data"]
  if rows % n:
    raise UserError(f"a batch of {rows} (train.batch_size) does not divide over {n} "
                    f"devices; use a multiple of {n}, or --config.mesh.data=1")
  if jax.process_count() == 1:
    return 0, rows
  spans = sorted(index[0].indices(rows)[:2] for index in
                 NamedSharding(mesh, P("data")).addressable_devices_indices_map((rows,)).values())
  if any(a[1] != b[0] for a, b in zip(spans, spans[1:])):
    raise UserError(f"this process's devices hold rows {spans} of the batch, not one block")
  return spans[0][0], spans[-1][1]


def _replicated(x, mesh: Mesh):
  sharding = NamedSharding(mesh, P())
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):  # device_put refuses global keys.
    data = jax.device_put(jax.random.key_data(x), sharding)
    return jax.random.wrap_key_data(data, impl=jax.random.key_impl(x))
  return jax.device_put(x, sharding)


def shard_batch(batch, mesh: Mesh, rows: int | None = None):
  """Split every array with a leading batch axis over `data`; replicate the rest.

  In a multi-process run `batch` holds only this process's rows (`process_rows`) of
  a batch of `rows`; the result is the global batch.
  """
  n = mesh.shape["data"]

  def put(x):
    if not hasattr(x, "ndim") or x.ndim == 0 or jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return _replicated(x, mesh)
    if jax.process_count() > 1:
      return jax.make_array_from_process_local_data(
          NamedSharding(mesh, P("data")), np.asarray(x), (rows,) + x.shape[1:])
    process_rows(x.shape[0], mesh)  # The divisibility check and its message.
    return jax.device_put(x, NamedSharding(mesh, P("data")))
  if n == 1:
    return batch
  return jax.tree.map(put, batch)


def global_batch(task, step: int, mesh: Mesh):
  """The task's batch for `step` on the mesh; each process gathers only its own rows."""
  rows = task.batch_rows()
  if jax.process_count() == 1:
    return shard_batch(task.batch(step), mesh)
  return shard_batch(task.batch(step, process_rows(rows, mesh)), mesh, rows)


def to_host(tree):
  """numpy copies of (possibly multi-process) arrays; every process gets the whole value."""
  def fetch(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(fetch(jax.random.key_data(x)), impl=jax.random.key_impl(x))
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return multihost_utils.process_allgather(x, tiled=True)
    return np.asarray(x)
  return jax.tree.map(fetch, tree)


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
