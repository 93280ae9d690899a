"""pytorch-fid's FIDInceptionV3 in plain numpy (float64), written from its PyTorch source as
data: each block is a list of branches, each branch a list of ops. It reads a state dict
with PyTorch's names and layouts (OIHW), so it shares nothing with dfm_flax.inception
but the weights."""
import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def conv(x, w, stride=1, pad=(0, 0)):
  """torch.nn.Conv2d without bias: cross-correlation, OIHW weights, zero padding."""
  x = np.pad(x, ((0, 0), (pad[0], pad[0]), (pad[1], pad[1]), (0, 0)))
  win = sliding_window_view(x, w.shape[2:], axis=(1, 2))[:, ::stride, ::stride]
  return np.einsum("nhwcij,ocij->nhwo", win, w, optimize=True)


def basic(state, name, x, stride=1, pad=(0, 0)):
  """BasicConv2d: conv, BatchNorm2d(eps=0.001) with running statistics, ReLU."""
  y = conv(x, state[f"{name}.conv.weight"], stride, pad)
  g, b = state[f"{name}.bn.weight"], state[f"{name}.bn.bias"]
  m, v = state[f"{name}.bn.running_mean"], state[f"{name}.bn.running_var"]
  return np.maximum((y - m) / np.sqrt(v + 1e-3) * g + b, 0)


def max_pool(x, stride, pad=0):
  x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
  return sliding_window_view(x, (3, 3), axis=(1, 2))[:, ::stride, ::stride].max(axis=(-1, -2))


def avg_pool_excluding_pad(x):
  """F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)."""
  pad = ((0, 0), (1, 1), (1, 1), (0, 0))
  total = sliding_window_view(np.pad(x, pad), (3, 3), axis=(1, 2)).sum(axis=(-1, -2))
  count = sliding_window_view(np.pad(np.ones_like(x[..., :1]), pad), (3, 3), axis=(1, 2)).sum(axis=(-1, -2))
  return total / count


def _c(name, stride=1, pad=(0, 0)):
  return ("conv", name, stride, pad)


_P1 = (1, 1)
# Each block: branches in torch.cat order. A branch: ops applied in turn; a tuple of
# branches inside a branch is a split whose outputs are concatenated (InceptionE).
BLOCKS = {
    "A": [[_c("branch1x1")], [_c("branch5x5_1"), _c("branch5x5_2", pad=(2, 2))],
          [_c("branch3x3dbl_1"), _c("branch3x3dbl_2", pad=_P1), _c("branch3x3dbl_3", pad=_P1)],
          [("avg",), _c("branch_pool")]],
    "B": [[_c("branch3x3", 2)],
          [_c("branch3x3dbl_1"), _c("branch3x3dbl_2", pad=_P1), _c("branch3x3dbl_3", 2)],
          [("max", 2, 0)]],
    "C": [[_c("branch1x1")],
          [_c("branch7x7_1"), _c("branch7x7_2", pad=(0, 3)), _c("branch7x7_3", pad=(3, 0))],
          [_c("branch7x7dbl_1"), _c("branch7x7dbl_2", pad=(3, 0)), _c("branch7x7dbl_3", pad=(0, 3)),
           _c("branch7x7dbl_4", pad=(3, 0)), _c("branch7x7dbl_5", pad=(0, 3))],
          [("avg",), _c("branch_pool")]],
    "D": [[_c("branch3x3_1"), _c("branch3x3_2", 2)],
          [_c("branch7x7x3_1"), _c("branch7x7x3_2", pad=(0, 3)), _c("branch7x7x3_3", pad=(3, 0)),
           _c("branch7x7x3_4", 2)],
          [("max", 2, 0)]],
}
_E_SPLITS = [[_c("branch1x1")],
             [_c("branch3x3_1"), ([_c("branch3x3_2a", pad=(0, 1))], [_c("branch3x3_2b", pad=(1, 0))])],
             [_c("branch3x3dbl_1"), _c("branch3x3dbl_2", pad=_P1),
              ([_c("branch3x3dbl_3a", pad=(0, 1))], [_c("branch3x3dbl_3b", pad=(1, 0))])]]
BLOCKS["E_1"] = _E_SPLITS + [[("avg",), _c("branch_pool")]]  # FIDInceptionE_1
BLOCKS["E_2"] = _E_SPLITS + [[("max", 1, 1), _c("branch_pool")]]  # FIDInceptionE_2

MIXED = [("Mixed_5b", "A"), ("Mixed_5c", "A"), ("Mixed_5d", "A"), ("Mixed_6a", "B"),
         ("Mixed_6b", "C"), ("Mixed_6c", "C"), ("Mixed_6d", "C"), ("Mixed_6e", "C"),
         ("Mixed_7a", "D"), ("Mixed_7b", "E_1"), ("Mixed_7c", "E_2")]


def _branch(state, prefix, ops, x):
  for op in ops:
    if isinstance(op, tuple) and op and isinstance(op[0], list):  # a split
      return np.concatenate([_branch(state, prefix, sub, x) for sub in op], -1)
    if op[0] == "conv":
      x = basic(state, f"{prefix}.{op[1]}", x, op[2], op[3])
    elif op[0] == "avg":
      x = avg_pool_excluding_pad(x)
    else:
      x = max_pool(x, op[1], op[2])
  return x


def block(state, prefix, kind, x):
  return np.concatenate([_branch(state, prefix, ops, x) for ops in BLOCKS[kind]], -1)


def resize_bilinear(x, size):
  """F.interpolate(mode="bilinear", align_corners=False), NHWC."""
  def axis_weights(n_in, n_out):
    src = np.maximum((np.arange(n_out) + 0.5) * n_in / n_out - 0.5, 0)
    i0 = np.minimum(np.floor(src).astype(int), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - (src - i0))
    np.add.at(m, (np.arange(n_out), i1), src - i0)
    return m
  rows, cols = axis_weights(x.shape[1], size), axis_weights(x.shape[2], size)
  return np.einsum("ih,jw,nhwc->nijc", rows, cols, x, optimize=True)


def features(state, images):
  """(N, H, W, 1|3) in [0, 1] -> (N, 2048), as FIDInceptionV3(resize_input, normalize_input)."""
  x = images.astype(np.float64)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, -1)
  x = 2 * resize_bilinear(x, 299) - 1
  x = basic(state, "Conv2d_1a_3x3", x, 2)
  x = basic(state, "Conv2d_2a_3x3", x)
  x = max_pool(basic(state, "Conv2d_2b_3x3", x, pad=(1, 1)), 2)
  x = basic(state, "Conv2d_4a_3x3", basic(state, "Conv2d_3b_1x1", x))
  x = max_pool(x, 2)
  for name, kind in MIXED:
    x = block(state, name, kind, x)
  return x.mean(axis=(1, 2))
