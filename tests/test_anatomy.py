"""Hidden-value scales (dfm_flax/nets/anatomy.py) against the float64 numpy loop and finite
differences, and the benchmark's command line on a smoke run."""
import numpy as np

from dfm_flax.data import images
from dfm_flax.nets import anatomy, fourier, reference
from tests.helpers import error_line, run_cli


def numpy_scales(params, coords, pitch, eps=1e-5):
  """The same four figures from reference.layer, derivatives by central differences."""
  def hidden(xy):
    out, h = [], xy
    for a, b in params:
      h = reference.layer(h, a, b)
      out.append(h)
    return out
  base = hidden(coords)
  steps = [np.array([eps, 0.0]), np.array([0.0, eps])]
  diffs = [[(p - m) / (2 * eps) * pitch[d] for p, m in zip(hidden(coords + s), hidden(coords - s))]
           for d, s in enumerate(steps)]
  return [{"std": h.std(), "max_abs": np.abs(h).max(),
           "per_pixel": np.sqrt(np.mean(np.stack([diffs[0][i], diffs[1][i]]) ** 2)),
           "weight_norm": np.sqrt(np.sum(np.square(a)) + np.sum(np.square(b)))}
          for i, (h, (a, b)) in enumerate(zip(base, params))]


def test_layer_scales_match_numpy_and_finite_differences():
  rng = np.random.default_rng(0)
  width, depth, channels, (h, w) = 4, 4, 3, (12, 20)
  # Weights of the scale training reaches, growing with depth so each layer differs.
  params = [(rng.normal(0, 0.1 * (i + 1) / np.sqrt(r), (r, n)), rng.normal(0, 0.1 * (i + 1) / np.sqrt(r), (r, n)))
            for i, (r, n) in enumerate(fourier.param_shapes(width, depth, channels))]
  coords = images.pixel_grid(h, w, (0.0, 0.5)).astype(np.float64)
  pitch = (0.5 / w, 0.5 / h)
  got = anatomy.layer_scales([(a.astype(np.float32), b.astype(np.float32)) for a, b in params],
                             coords.astype(np.float32), pitch, jacobian_points=len(coords))
  want = numpy_scales(params, coords, pitch)
  assert len(got) == depth
  for g, e in zip(got, want):
    for key in ("std", "max_abs", "per_pixel", "weight_norm"):
      np.testing.assert_allclose(g[key], e[key], rtol=2e-3, err_msg=key)
  assert got[-1]["per_pixel"] > got[0]["per_pixel"]  # The figures tell layers apart.


def test_hidden_scale_command(tmp_path):
  wd = str(tmp_path / "run")
  assert run_cli("experiments.run", "--config", "experiments/compress.py:smoke",
                 "--workdir", wd).returncode == 0
  proc = run_cli("studies.hidden_scale", wd)
  assert proc.returncode == 0, proc.stderr
  rows = [line.split() for line in proc.stdout.splitlines()[2:]]
  assert [int(r[0]) for r in rows] == [1, 2, 3, 4]  # smoke: depth 4
  assert all(float(r[1]) > 0 and float(r[4]) > 0 for r in rows)
  assert all(0 < float(r[5]) < 1 for r in rows)  # Adam's sqrt(v): found per layer, finite
  assert "not a dfm run directory" in error_line(run_cli("studies.hidden_scale", str(tmp_path)))
