"""studies/bits_audit.py: its ideal-payload figure is the coder's own size where the
model fits, and it finds the gain of a per-group model where one exists."""
import numpy as np

from dfm_flax.codec import fileformat, grids
from dfm_flax.nets import fourier
from studies import bits_audit
from tests.helpers import laplace_params


def test_the_per_layer_figure_is_the_coded_payload():
  data = fileformat.encode(laplace_params(), (30, 40, 3), 6, 4, (0.0, 0.5), "auto", 10, "ans")
  payload = len(data) - fileformat.header_bytes(4)
  ideal, groups = bits_audit.entropy_bytes(data)
  # ANS codes within a few bytes of the ideal size of its own per-layer model.
  assert abs(ideal["layer"] / payload - 1) < 0.01
  assert groups["layer"] == 4 and groups["layer, popcount"] == 3 + 3 * 7


def test_a_per_popcount_model_gains_where_the_spread_follows_the_popcount():
  rng = np.random.default_rng(0)
  params = []
  for r, n in fourier.param_shapes(6, 4, 1):  # Spread 0.2^popcount: one Laplace per layer misfits.
    spread = (0.2 ** bits_audit.popcounts(r))[:, None] * np.ones((1, n))
    params.append(tuple(rng.laplace(0, spread).astype(np.float32) for _ in range(2)))
  ideal, _ = bits_audit.entropy_bytes(fileformat.encode(params, (30, 40, 1), 6, 4, bits=10))
  assert ideal["layer, popcount"] < 0.8 * ideal["layer"]
  assert ideal["layer, popcount, output"] <= ideal["layer, popcount"] * 1.01
  even_file = fileformat.encode(laplace_params(6, 4, 1), (30, 40, 1), 6, 4, bits=10)
  even = bits_audit.entropy_bytes(even_file)[0]
  assert even["layer, popcount"] > 0.97 * even["layer"]  # Nothing to gain: same spread.


def test_step_savings_are_zero_for_one_group_and_never_negative():
  params = laplace_params(4, 4, 1)
  grid = np.linspace(0, 0.5, 16)
  coords = np.stack(np.meshgrid(grid, grid), -1).reshape(-1, 2)
  sensitivity = grids.weight_sensitivity(params, coords.astype(np.float32), "auto", probes=2)
  saved = bits_audit.step_savings(sensitivity, params)
  assert abs(saved["layer"]) < 1e-9  # One group per layer: its own mean.
  assert all(v >= -1e-9 for v in saved.values())  # Arithmetic >= geometric mean.
  assert saved["layer, popcount, output"] >= saved["layer, popcount"] - 1e-9  # Finer groups.
