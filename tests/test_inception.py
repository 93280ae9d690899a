"""Inception-v3 for FID: reading PyTorch weight files without PyTorch, and layer conventions.

No real weights are available offline: a synthetic state dict with the pytorch-fid
names and shapes is written in both torch formats by a minimal writer below.
"""
import io
import pickle
import sys
import types
import zipfile
from collections import OrderedDict

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dfm_flax.errors import UserError
from dfm_flax.evaluation import inception
from tests import inception_reference

pytestmark = pytest.mark.slow  # Building the network takes ~30 s on 2 cores.


class _Storage:
  def __init__(self, key, numel):
    self.key, self.numel = key, numel


def _fake_torch(monkeypatch):
  torch = types.ModuleType("torch")
  utils = types.ModuleType("torch._utils")

  def _rebuild_tensor_v2(*args):
    raise AssertionError("never called while writing")
  _rebuild_tensor_v2.__module__ = "torch._utils"
  _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  storage_cls = type("FloatStorage", (), {"__module__": "torch"})
  torch.FloatStorage, torch._utils = storage_cls, utils
  monkeypatch.setitem(sys.modules, "torch", torch)
  monkeypatch.setitem(sys.modules, "torch._utils", utils)
  return _rebuild_tensor_v2, storage_cls


def write_torch_file(path, state, monkeypatch, legacy=False):
  """Serialise {name: float32 array} the way torch.save does (zip or legacy format)."""
  rebuild, storage_cls = _fake_torch(monkeypatch)
  arrays = {str(i): np.ascontiguousarray(v, np.float32) for i, v in enumerate(state.values())}

  class Tensor:
    def __init__(self, key):
      self.key = key

    def __reduce__(self):
      a = arrays[self.key]
      strides = tuple(s // 4 for s in a.strides)
      return rebuild, (_Storage(self.key, a.size), 0, a.shape, strides, False, OrderedDict())

  class Pickler(pickle.Pickler):
    def persistent_id(self, obj):
      if isinstance(obj, _Storage):
        return ("storage", storage_cls, obj.key, "cpu", obj.numel)
      return None

  buf = io.BytesIO()
  Pickler(buf, protocol=2).dump(OrderedDict((k, Tensor(str(i))) for i, k in enumerate(state)))
  if legacy:
    with open(path, "wb") as f:
      for header in (0x1950A86A20F9469CFC6C, 1001, {"little_endian": True}):
        pickle.dump(header, f, protocol=2)
      f.write(buf.getvalue())
      pickle.dump(list(arrays), f, protocol=2)
      for a in arrays.values():
        f.write(np.int64(a.size).tobytes() + a.tobytes())
  else:
    with zipfile.ZipFile(path, "w") as z:
      z.writestr("archive/data.pkl", buf.getvalue())
      for key, a in arrays.items():
        z.writestr(f"archive/data/{key}", a.tobytes())


def pytorch_fid_state(model, seed=0):
  """A state dict with pytorch-fid's names and PyTorch's layouts (OIHW), random values."""
  rng = np.random.default_rng(seed)
  state = OrderedDict()
  for path, node in nnx.iter_graph(model):
    if isinstance(node, inception.BasicConv2d):
      name = ".".join(str(p) for p in path)
      kh, kw, cin, cout = node.conv.kernel.shape
      state[f"{name}.conv.weight"] = rng.normal(0, 0.05, (cout, cin, kh, kw))
      state[f"{name}.bn.weight"] = rng.uniform(0.5, 1.5, cout)
      state[f"{name}.bn.bias"] = rng.normal(0, 0.1, cout)
      state[f"{name}.bn.running_mean"] = rng.normal(0, 0.1, cout)
      state[f"{name}.bn.running_var"] = rng.uniform(0.5, 2, cout)
  state["fc.weight"] = rng.normal(size=(1008, 2048))
  return state


@pytest.fixture(scope="module")
def model():
  return inception.FIDInceptionV3(nnx.Rngs(0))


def test_architecture_matches_pytorch_fid(model):
  # stem 5 + 3 InceptionA x 7 + InceptionB 4 + 4 InceptionC x 10 + InceptionD 6 + 2 InceptionE x 9
  assert inception.count_basic_convs(model) == 5 + 21 + 4 + 40 + 6 + 18
  assert model.Mixed_7c.pool == "max" and model.Mixed_7b.pool == "avg"


@pytest.mark.parametrize("legacy", [False, True])
def test_weights_file_round_trip(model, tmp_path, monkeypatch, legacy):
  state = pytorch_fid_state(model)
  path = tmp_path / "pt_inception.pth"
  write_torch_file(path, state, monkeypatch, legacy=legacy)
  monkeypatch.undo()
  read = inception.torch_state_dict(str(path))
  assert list(read) == list(state)
  for k in ("Conv2d_1a_3x3.conv.weight", "Mixed_7c.branch_pool.bn.running_var", "fc.weight"):
    np.testing.assert_array_equal(read[k], state[k].astype(np.float32))
  inception.load_weights(model, read)
  np.testing.assert_array_equal(model.Mixed_6e.branch7x7_2.conv.kernel[...],
                                state["Mixed_6e.branch7x7_2.conv.weight"].transpose(2, 3, 1, 0).astype(np.float32))
  np.testing.assert_array_equal(model.Mixed_5b.branch1x1.bn.mean[...],
                                state["Mixed_5b.branch1x1.bn.running_mean"].astype(np.float32))


def test_basic_conv_follows_pytorch_conventions(tmp_path):
  """Conv2d (cross-correlation, OIHW, zero padding) + BatchNorm(eps=1e-3) + ReLU in numpy."""
  rng = np.random.default_rng(3)
  layer = inception.BasicConv2d(2, 3, (3, 2), padding=(1, 0), rngs=nnx.Rngs(0))
  w = rng.normal(size=(3, 2, 3, 2))
  gamma, beta, mean, var = rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3), rng.uniform(0.5, 2, 3)
  state = {"x.conv.weight": w, "x.bn.weight": gamma, "x.bn.bias": beta,
           "x.bn.running_mean": mean, "x.bn.running_var": var}
  holder = types.SimpleNamespace(x=layer)
  with pytest.raises(UserError, match="filled"):  # not a whole Inception: refused...
    inception.load_weights(holder, state)
  x = rng.normal(size=(1, 5, 4, 2))  # ...but every tensor was copied in before the check.
  got = np.asarray(layer(jnp.asarray(x, jnp.float32)))
  xp = np.pad(x, ((0, 0), (1, 1), (0, 0), (0, 0)))
  out = np.zeros((1, 5, 3, 3))
  for i in range(5):
    for j in range(3):
      for o in range(3):
        out[0, i, j, o] = np.sum(xp[0, i:i + 3, j:j + 2, :] * w[o].transpose(1, 2, 0))
  expect = np.maximum((out - mean) / np.sqrt(var + 1e-3) * gamma + beta, 0)
  np.testing.assert_allclose(got, expect, rtol=1e-4, atol=1e-4)


def test_features_shape_and_gray_input(model):
  gray = np.random.default_rng(0).random((2, 28, 28, 1)).astype(np.float32)
  feats = np.asarray(model(jnp.asarray(gray)))
  assert feats.shape == (2, 2048) and np.all(np.isfinite(feats)) and np.all(feats >= 0)
  rgb = np.asarray(model(jnp.asarray(np.repeat(gray, 3, -1))))
  np.testing.assert_allclose(feats, rgb, rtol=1e-5, atol=1e-5)


def test_bad_weights_files(tmp_path):
  with pytest.raises(UserError, match="not found"):
    inception.torch_state_dict(str(tmp_path / "missing.pth"))
  (tmp_path / "junk.pth").write_bytes(b"\x80\x02junk")
  with pytest.raises(UserError, match="cannot read PyTorch weights"):
    inception.torch_state_dict(str(tmp_path / "junk.pth"))


@pytest.fixture(scope="module")
def loaded(model):
  """The model with random weights in pytorch-fid's layout, and those weights (float64)."""
  state = pytorch_fid_state(model, seed=1)
  inception.load_weights(model, {k: v.astype(np.float32) for k, v in state.items()})
  return model, {k: v.astype(np.float32).astype(np.float64) for k, v in state.items()}


def _close(got, expect):
  """Agreement to float32 accuracy, relative to the size of the activations."""
  got, expect = np.asarray(got, np.float64), np.asarray(expect)
  assert got.shape == expect.shape
  scale = np.abs(expect).max()
  assert scale > 0
  np.testing.assert_allclose(got / scale, expect / scale, atol=2e-5)


@pytest.mark.parametrize("name,kind", inception_reference.MIXED)
def test_each_block_matches_an_independent_numpy_network(loaded, name, kind):
  """Each Mixed block, with the same random weights, against pytorch-fid's block written in
  numpy (tests/inception_reference.py); small spatial inputs of the block's channel count."""
  model, state = loaded
  layer = getattr(model, name)
  cin = state[f"{name}.branch1x1.conv.weight" if kind != "B" and kind != "D"
              else f"{name}.{'branch3x3' if kind == 'B' else 'branch3x3_1'}.conv.weight"].shape[1]
  x = np.random.default_rng(2).random((2, 7, 6, cin))
  _close(layer(jnp.asarray(x, jnp.float32)), inception_reference.block(state, name, kind, x))


@pytest.mark.parametrize("size_in", [28, 320])
def test_resize_matches_torch_bilinear(size_in):
  x = np.random.default_rng(size_in).random((1, size_in, size_in, 3))
  got = jax.image.resize(jnp.asarray(x, jnp.float32), (1, 299, 299, 3), "bilinear", antialias=False)
  np.testing.assert_allclose(np.asarray(got), inception_reference.resize_bilinear(x, 299), atol=1e-4)


def test_whole_network_matches_an_independent_numpy_network(loaded):
  model, state = loaded
  images = np.random.default_rng(4).random((1, 330, 310, 3))  # downsized: antialiasing would show
  _close(model(jnp.asarray(images, jnp.float32)), inception_reference.features(state, images))
