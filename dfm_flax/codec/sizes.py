"""How large a .dfm file will be, and which net fits a size budget: a model of coded bits
per weight, no training. Why each constant is what it is: docs/codec.md#choosing-the-net."""
from __future__ import annotations

from dfm_flax.codec import fileformat
from dfm_flax.errors import UserError
from dfm_flax.nets import fourier

# Coded bits per weight = bit depth - CODING_GAIN_BITS with the ANS coder on the recipe's
# nets (the middle of the measured range; encode_to_bpp corrects what is left).
CODING_GAIN_BITS = 1.4
# The quantisation grids of --bpp: "uniform" (the bit depth's, `fileformat.quantize`) or
# "sensitivity" (codec/grids.py: a step per layer, scaled to the size). The latter's
# files hold their layers in the widest alphabet, GRID_BITS; its steps set the size.
GRIDS = ("uniform", "sensitivity")
GRID_BITS = 12
# Coded bits per weight the picker plans with on the sensitivity grid: fewer bits than the
# uniform grid needs for the same distortion, so a larger net fits the same size.
SENSITIVITY_BITS_PER_WEIGHT = 6.5
# The bit depth a --bpp target starts from: a smaller net at 10 bits beat a larger one at
# 8 bits at equal bytes.
BPP_BITS = 10
# Net shapes the picker considers: deeper nets collapse more often under the recipe. Within
# a budget it spends on width first as long as the depth stays at least MIN_DEPTH.
WIDTHS, DEPTHS, MIN_DEPTH = range(3, 11), range(4, 8), 5
# The sensitivity grid's picker goes one layer deeper (it gained at equal bytes there).
SENSITIVITY_DEPTHS = range(4, 9)


def check_not_too_small(shape, weights: int, bits: int) -> None:
  h, w, c = shape
  if weights * (16 if bits == 16 else bits) >= 8 * h * w * c:
    raise UserError(f"the image ({w}x{h}x{c}) is too small for this net: its {weights:,} "
                    f"weights at {bits} bits take more bytes than the raw pixels; use a smaller net")


def predicted_bytes(width: int, depth: int, channels: int, bits: int,
                    grid: str = "uniform") -> float:
  """The .dfm file size the model of coded bits per weight predicts."""
  per_weight = (16 if bits == 16 else SENSITIVITY_BITS_PER_WEIGHT if grid == "sensitivity"
                else bits - CODING_GAIN_BITS)
  return fileformat.header_bytes(depth) + fourier.num_params(width, depth, channels) * per_weight / 8


def size_for_bpp(bpp: float, image_shape, bits: int, grid: str = "uniform") -> tuple[int, int]:
  """(width, depth) whose .dfm file at `bits` (on the sensitivity grid: at its planned
  bits per weight) should come closest to `bpp`.

  Uniform grid: among the shapes predicted within 7% of the budget, the widest with depth
  >= MIN_DEPTH (then the closest of that width); with none that close, the closest with
  depth >= MIN_DEPTH within 20%, else the closest one. Sensitivity grid (depths
  SENSITIVITY_DEPTHS): the deepest within 20% (then the closest), else the closest. Below
  the smallest net this returns the smallest (encode_to_bpp says so).
  """
  error = _size_errors(bpp, image_shape, bits, grid)
  shapes = list(error)
  if grid == "sensitivity":
    # Depth first: on this grid one more layer beat more width at equal bytes
    # (docs/codec.md#choosing-the-net); the grid's scale absorbs the 20%.
    near = [s for s in shapes if abs(error[s]) <= 0.2]
    return max(near, key=lambda s: (s[1], -abs(error[s]))) if near else min(
        shapes, key=lambda s: abs(error[s]))
  close = [s for s in shapes if abs(error[s]) <= 0.07]
  if close:
    return max(close, key=lambda s: (s[1] >= MIN_DEPTH, s[0], -abs(error[s])))
  # None that close: the closest of depth >= MIN_DEPTH within 20% (the bit depth closes the
  # rest), before a shallower one, which fits far worse (docs/codec.md#choosing-the-net).
  deep = [s for s in shapes if s[1] >= MIN_DEPTH and abs(error[s]) <= 0.2]
  return min(deep or shapes, key=lambda s: abs(error[s]))


def _size_errors(bpp: float, image_shape, bits: int, grid: str) -> dict:
  """(width, depth) -> predicted file size / the budget - 1, over the grid's shapes."""
  h, w, c = image_shape
  target = bpp * h * w / 8
  depths = SENSITIVITY_DEPTHS if grid == "sensitivity" else DEPTHS
  return {(wd, d): predicted_bytes(wd, d, c, bits, grid) / target - 1
          for wd in WIDTHS for d in depths}


def wide_size_for_bpp(bpp: float, image_shape) -> tuple[int, int]:
  """The sensitivity grid's second candidate: the widest shape of depth >= MIN_DEPTH
  within 20% of the budget (then the closest), else `size_for_bpp`'s pick."""
  error = _size_errors(bpp, image_shape, GRID_BITS, "sensitivity")
  near = [s for s in error if s[1] >= MIN_DEPTH and abs(error[s]) <= 0.2]
  if not near:
    return size_for_bpp(bpp, image_shape, GRID_BITS, "sensitivity")
  return max(near, key=lambda s: (s[0], -abs(error[s])))


def nearest_bits(bits: int, got_bytes: int, target_bytes: float, depth: int) -> int:
  """The bit depth whose file should land nearest the target, given the file at `bits`:
  one bit more or less changes every coded weight by about one bit."""
  payload = got_bytes - fileformat.header_bytes(depth)
  per_bit = payload / max(bits - CODING_GAIN_BITS, 1.0)  # bytes per bit of depth.
  best = bits + round((target_bytes - got_bytes) / per_bit)
  return int(min(max(best, 4), 12))
