"""Inception-v3 pool3 features (2048-d) in Flax NNX, as used for FID by pytorch-fid.

The architecture is pytorch-fid's FIDInceptionV3 (the TF 2015-12-05 graph ported
to PyTorch): torchvision's Inception-v3 with FIDInceptionA/C/E blocks (average
pools that exclude padding, a max pool in the last block). Weights come from the
standard file `pt_inception-2015-12-05-6726825d.pth`, read without PyTorch by
`torch_state_dict` (both the zip and the legacy torch serialisation formats).
Inputs are images in [0, 1], resized to 299x299 (bilinear, no antialiasing, like
F.interpolate(align_corners=False)) and scaled to [-1, 1]; gray is repeated to RGB.
Attribute names follow the PyTorch module names so that weights map one to one.
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dfm_flax.errors import UserError
from dfm_flax.evaluation.batched import compiled, in_batches


def _pair(v):
  return (v, v) if isinstance(v, int) else tuple(v)


class BasicConv2d(nnx.Module):
  """conv (no bias) -> batch norm (eps 1e-3, running statistics) -> relu."""

  def __init__(self, cin, cout, kernel, stride=1, padding=0, *, rngs):
    ph, pw = _pair(padding)
    self.conv = nnx.Conv(cin, cout, _pair(kernel), strides=_pair(stride),
                         padding=[(ph, ph), (pw, pw)], use_bias=False, rngs=rngs)
    self.bn = nnx.BatchNorm(cout, epsilon=1e-3, use_running_average=True, rngs=rngs)

  def __call__(self, x):
    return nnx.relu(self.bn(self.conv(x)))


def _avg3(x):  # 3x3 stride 1, padding excluded from the mean (count_include_pad=False)
  return nnx.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max3s2(x):
  return nnx.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nnx.Module):
  def __init__(self, cin, pool_features, *, rngs):
    self.branch1x1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch5x5_1 = BasicConv2d(cin, 48, 1, rngs=rngs)
    self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1, rngs=rngs)
    self.branch_pool = BasicConv2d(cin, pool_features, 1, rngs=rngs)

  def __call__(self, x):
    return jnp.concatenate([
        self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
        self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        self.branch_pool(_avg3(x))], -1)


class InceptionB(nnx.Module):
  def __init__(self, cin, *, rngs):
    self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2, rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    return jnp.concatenate([
        self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
        _max3s2(x)], -1)


class InceptionC(nnx.Module):
  def __init__(self, cin, c7, *, rngs):
    self.branch1x1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1, rngs=rngs)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)

  def __call__(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = x
    for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                  self.branch7x7dbl_4, self.branch7x7dbl_5):
      d = layer(d)
    return jnp.concatenate([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], -1)


class InceptionD(nnx.Module):
  def __init__(self, cin, *, rngs):
    self.branch3x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2, rngs=rngs)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3), rngs=rngs)
    self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0), rngs=rngs)
    self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2, rngs=rngs)

  def __call__(self, x):
    b7 = x
    for layer in (self.branch7x7x3_1, self.branch7x7x3_2, self.branch7x7x3_3, self.branch7x7x3_4):
      b7 = layer(b7)
    return jnp.concatenate([self.branch3x3_2(self.branch3x3_1(x)), b7, _max3s2(x)], -1)


class InceptionE(nnx.Module):
  """FIDInceptionE_1 (pool="avg") and FIDInceptionE_2 (pool="max")."""

  def __init__(self, cin, pool: str, *, rngs):
    self.branch1x1 = BasicConv2d(cin, 320, 1, rngs=rngs)
    self.branch3x3_1 = BasicConv2d(cin, 384, 1, rngs=rngs)
    self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1, rngs=rngs)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1, rngs=rngs)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1), rngs=rngs)
    self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0), rngs=rngs)
    self.branch_pool = BasicConv2d(cin, 192, 1, rngs=rngs)
    self.pool = pool

  def __call__(self, x):
    b3 = self.branch3x3_1(x)
    d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pooled = (_avg3(x) if self.pool == "avg" else
              nnx.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1))))
    return jnp.concatenate([
        self.branch1x1(x),
        jnp.concatenate([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], -1),
        jnp.concatenate([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], -1),
        self.branch_pool(pooled)], -1)


class FIDInceptionV3(nnx.Module):
  def __init__(self, rngs: nnx.Rngs):
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2, rngs=rngs)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3, rngs=rngs)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1, rngs=rngs)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1, rngs=rngs)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3, rngs=rngs)
    self.Mixed_5b = InceptionA(192, 32, rngs=rngs)
    self.Mixed_5c = InceptionA(256, 64, rngs=rngs)
    self.Mixed_5d = InceptionA(288, 64, rngs=rngs)
    self.Mixed_6a = InceptionB(288, rngs=rngs)
    self.Mixed_6b = InceptionC(768, 128, rngs=rngs)
    self.Mixed_6c = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6d = InceptionC(768, 160, rngs=rngs)
    self.Mixed_6e = InceptionC(768, 192, rngs=rngs)
    self.Mixed_7a = InceptionD(768, rngs=rngs)
    self.Mixed_7b = InceptionE(1280, "avg", rngs=rngs)
    self.Mixed_7c = InceptionE(2048, "max", rngs=rngs)

  def __call__(self, images: jax.Array) -> jax.Array:
    """(N, H, W, 1 or 3) in [0, 1] -> (N, 2048) pool3 features."""
    if images.shape[-1] == 1:
      images = jnp.repeat(images, 3, axis=-1)
    x = jax.image.resize(images, (images.shape[0], 299, 299, 3), "bilinear", antialias=False)
    x = 2 * x - 1
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = _max3s2(x)
    x = _max3s2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
    for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c",
                 "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"):
      x = getattr(self, name)(x)
    return jnp.mean(x, axis=(1, 2))


# --- reading a PyTorch state dict without PyTorch --------------------------------------
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32, "ByteStorage": np.uint8,
           "BoolStorage": np.bool_}


def _rebuild_tensor(storage, offset, size, stride, *unused):
  """A view into the storage (legacy files fill storages after the tensors are built)."""
  if not size:
    return storage[offset:offset + 1].reshape(())
  itemsize = storage.dtype.itemsize
  return np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size),
                                         strides=tuple(s * itemsize for s in stride))


class _TorchUnpickler(pickle.Unpickler):
  def __init__(self, f, load_storage):
    super().__init__(f)
    self.load_storage = load_storage

  def find_class(self, module, name):
    if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
      return _rebuild_tensor
    if module == "torch" and name in _DTYPES:
      return _DTYPES[name]
    if module == "collections" and name == "OrderedDict":
      return OrderedDict
    if module == "torch._utils" and name == "_rebuild_parameter":
      return lambda data, requires_grad, hooks: data
    raise pickle.UnpicklingError(f"unexpected object {module}.{name} in a weights file")

  def persistent_load(self, pid):
    # ('storage', storage type, key, location, numel[, view metadata])
    return self.load_storage(pid[1], str(pid[2]), int(pid[4]))


def torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """name -> numpy array from a .pth file (zip or legacy format), no torch needed."""
  if not os.path.isfile(path):
    raise UserError(f"Inception weights file not found: {path}")
  try:
    if zipfile.is_zipfile(path):
      with zipfile.ZipFile(path) as z:
        prefix = next(n for n in z.namelist() if n.endswith("data.pkl"))[:-len("data.pkl")]

        def load(dtype, key, numel):
          return np.frombuffer(z.read(f"{prefix}data/{key}"), dtype)[:numel]
        state = _TorchUnpickler(io.BytesIO(z.read(prefix + "data.pkl")), load).load()
    else:
      state = _legacy_state_dict(path)
  except (pickle.UnpicklingError, EOFError, KeyError, StopIteration, ValueError) as e:
    raise UserError(f"cannot read PyTorch weights from {path}: {type(e).__name__}: {e}") from None
  return {k: np.array(v) for k, v in state.items()}  # copies: views -> owned arrays


def _legacy_state_dict(path: str) -> dict:
  """torch's pre-1.6 format: magic, protocol, sys info, object, storage keys, raw storages."""
  with open(path, "rb") as f:
    for _ in range(3):
      pickle.load(f)
    pending = {}

    def load(dtype, key, numel):
      pending.setdefault(key, np.empty(numel, dtype))
      return pending[key]
    state = _TorchUnpickler(f, load).load()
    keys = pickle.load(f)
    for key in keys:
      numel = int(np.frombuffer(f.read(8), "<i8")[0])
      buf = pending[key]
      buf[:] = np.frombuffer(f.read(numel * buf.dtype.itemsize), buf.dtype)
  return state


_SUFFIX = {"conv.weight": ("conv", "kernel"), "bn.weight": ("bn", "scale"), "bn.bias": ("bn", "bias"),
           "bn.running_mean": ("bn", "mean"), "bn.running_var": ("bn", "var")}


def load_weights(model: FIDInceptionV3, state: dict[str, np.ndarray]) -> None:
  """Copy a pytorch-fid state dict into the model (OIHW conv kernels -> HWIO)."""
  used = 0
  for name, value in state.items():
    suffix = next((s for s in _SUFFIX if name.endswith(s)), None)
    if suffix is None:
      continue  # fc.*, num_batches_tracked: not needed for pool3 features.
    node = model
    for part in name[:-len(suffix) - 1].split("."):
      node = getattr(node, part, None)
      if node is None:
        raise UserError(f"weights file has {name}, which this Inception-v3 lacks")
    sub, attr = _SUFFIX[suffix]
    var = getattr(getattr(node, sub), attr)
    arr = value.transpose(2, 3, 1, 0) if suffix == "conv.weight" else value
    if arr.shape != var.shape:
      raise UserError(f"weights file: {name} has shape {value.shape}, expected one that "
                      f"transposes to {var.shape}")
    var.set_value(jnp.asarray(arr, jnp.float32))
    used += 1
  expected = 5 * count_basic_convs(model)
  if used != expected:
    raise UserError(f"weights file filled {used} of {expected} Inception tensors: not the "
                    f"pytorch-fid pt_inception weights")


def count_basic_convs(model) -> int:
  return sum(1 for _, node in nnx.iter_graph(model) if isinstance(node, BasicConv2d))


def fid_features(weights_path: str, batch: int = 50):
  """A function images (N, H, W, C) in [0, 1] -> (N, 2048) features."""
  model = FIDInceptionV3(nnx.Rngs(0))
  load_weights(model, torch_state_dict(weights_path))
  fn = compiled(model, "__call__")

  def extract(images: np.ndarray) -> np.ndarray:
    return in_batches(fn, np.asarray(images, np.float32), batch)
  return extract
