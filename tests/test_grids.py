"""The sensitivity grid (dfm_flax/codec/grids.py) and the codec's per-layer steps."""
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from dfm_flax.codec import fileformat, grids, sizes
from dfm_flax.data import images
from dfm_flax.nets import fourier
from tests.helpers import laplace_params


def _net(width=4, depth=3, method="direct"):
  return ml_collections.ConfigDict({"width": width, "depth": depth, "coord_range": (0.0, 0.5),
                                    "method": method})


def test_encoder_steps_are_the_files_grid_and_never_clip():
  params = laplace_params(4, 3, 1, seed=1)
  flat = fileformat.flat_layers(params)
  floors = [np.abs(x).max() / (2**7 - 1) for x in flat]
  # Layer 0 finer than its 8-bit floor (so raised to it), the others coarser.
  asked = [floors[0] / 10, floors[1] * 3, floors[2] * 7]
  data = fileformat.encode(params, (8, 8, 1), 4, 3, (0.0, 0.5), "direct", 8, "ans", steps=asked)
  _, back = fileformat.decode(data)
  for x, y, step in zip(flat, fileformat.flat_layers(back), [floors[0], asked[1], asked[2]]):
    step = np.float32(step)
    assert np.allclose(y / step, np.round(y / step), atol=1e-3)  # on the grid of that step
    assert np.max(np.abs(y - x)) <= step / 2 * (1 + 1e-5)  # rounded, not clipped
  # Coarser steps, fewer bytes; no steps is the default grid, byte for byte.
  default = fileformat.encode(params, (8, 8, 1), 4, 3, (0.0, 0.5), "direct", 8, "ans")
  assert len(data) < len(default)
  assert fileformat.encode(params, (8, 8, 1), 4, 3, (0.0, 0.5), "direct", 8, "ans",
                      steps=floors) == default
  with pytest.raises(ValueError, match="2 grid steps for 3 layers"):
    fileformat.encode(params, (8, 8, 1), 4, 3, (0.0, 0.5), "direct", 8, "ans", steps=asked[:2])


def _exact_sensitivity(params, coords, method):
  """sum over pixels and channels of (d output / d weight)^2, from the full Jacobian."""
  jac = jax.jacrev(lambda p: fourier.net_apply(p, jnp.asarray(coords), method))(params)
  return np.array([(np.sum(np.asarray(ja) ** 2) + np.sum(np.asarray(jb) ** 2))
                   / (2 * np.size(a)) / len(coords) for (ja, jb), (a, _) in zip(jac, params)])


def test_sensitivity_matches_the_exact_jacobian():
  params = laplace_params(4, 3, 2, seed=2)
  coords = images.pixel_grid(5, 5, (0.0, 0.5))
  exact = _exact_sensitivity(params, coords, "direct")
  # One pixel, one channel: sign probes square away, so the estimate is exact.
  one = [(a[:, :1], b[:, :1]) if i == 2 else (a, b) for i, (a, b) in enumerate(params)]
  assert np.allclose(grids.layer_sensitivity(one, coords[:1], "direct", probes=1),
                     _exact_sensitivity(one, coords[:1], "direct"), rtol=1e-4)
  # 25 pixels, 2 channels: unbiased, so many probes come close.
  est = grids.layer_sensitivity(params, coords, "direct", probes=3000)
  assert np.allclose(est, exact, rtol=0.15)
  # The first layer's few weights move the picture most (the phases of all that follows).
  assert exact[0] > exact[1] > 0


def test_encode_at_bytes_hits_the_budget_with_steps_by_sensitivity():
  params = laplace_params(6, 4, 3, seed=3)
  net = _net(6, 4, "product")
  sens = np.array([400.0, 25.0, 4.0, 1.0])
  target = len(fileformat.encode(params, (30, 40, 3), 6, 4, (0.0, 0.5), "product", 8, "ans"))
  data, steps = grids.encode_at_bytes(params, (30, 40, 3), net, sens, target)
  assert target * 0.98 <= len(data) <= target
  # Steps in proportion to 1 / sqrt(sensitivity): 1 : 4 : 10 : 20.
  assert np.allclose(np.array(steps) / steps[0], [1, 4, 10, 20], rtol=1e-6)
  header, back = fileformat.decode(data)
  assert header["bits"] == 12  # the widest alphabet: the steps, not the depth, set the size
  # A budget below the smallest file gives the smallest (every weight 0).
  data, _ = grids.encode_at_bytes(params, (30, 40, 3), net, sens, 1)
  _, back = fileformat.decode(data)
  assert all(np.all(a == 0) and np.all(b == 0) for a, b in back)


def test_fake_quantisation_with_steps_matches_the_file():
  params = laplace_params(4, 3, 1, seed=4)
  steps = [0.002, 0.01, 0.03]
  _, decoded = fileformat.decode(fileformat.encode(params, (8, 8, 1), 4, 3, bits=12, coder="ans",
                                         steps=steps))
  for (a, b), (da, db), step in zip(params, decoded, steps):
    qa, qb = fourier.fake_quantize(jnp.asarray(a), jnp.asarray(b), 12, step)
    np.testing.assert_allclose(qa, da, rtol=0, atol=1e-7)
    np.testing.assert_allclose(qb, db, rtol=0, atol=1e-7)


def test_picker_plans_deeper_nets_on_the_sensitivity_grid():
  more = 0
  for shape in ((512, 512, 3), (300, 451, 3), (191, 384, 1), (427, 640, 3), (400, 400, 3)):
    uniform = sizes.size_for_bpp(0.3, shape, sizes.BPP_BITS)
    sens = sizes.size_for_bpp(0.3, shape, sizes.BPP_BITS, "sensitivity")
    h, w, c = shape
    error = lambda s: sizes.predicted_bytes(*s, c, 12, "sensitivity") / (0.3 * h * w / 8) - 1  # noqa: E731
    assert abs(error(sens)) <= 0.2
    # The deepest shape within 20% of the budget, then the closest.
    near = [(wd, d) for wd in sizes.WIDTHS for d in sizes.SENSITIVITY_DEPTHS
            if abs(error((wd, d))) <= 0.2]
    assert sens[1] == max(d for _, d in near)
    assert abs(error(sens)) == min(abs(error(s)) for s in near if s[1] == sens[1])
    more += fourier.num_params(*sens, c) > fourier.num_params(*uniform, c)
  assert more >= 3  # Fewer bits per weight: a larger net for most of them.


@pytest.mark.slow
def test_codec_on_the_sensitivity_grid_hits_the_size_and_fine_tunes_on_its_grid(tmp_path):
  import json

  from tests.helpers import error_line, run_cli
  wd, img = str(tmp_path / "run"), str(tmp_path / "coffee.png")
  images.save_png(images.default_image(), img)
  assert run_cli("experiments.run", "--config", "experiments/compress.py:smoke",
                 "--workdir", wd).returncode == 0
  out = str(tmp_path / "s.dfm")
  proc = run_cli("experiments.codec", "encode", img, "--out", out, "--from", wd, "--bpp", "0.02",
                 "--grid", "sensitivity", "--qat_steps", "20")
  assert proc.returncode == 0, proc.stderr
  assert "sensitivity grid" in proc.stdout
  size = os.path.getsize(out)
  assert abs(8 * size / (400 * 400) / 0.02 - 1) <= 0.1 and "nearest" not in proc.stderr
  header, back = fileformat.decode(open(out, "rb").read())
  # The fine-tune rounded to the steps the file stores: its weights are the file's.
  with open(os.path.join(out + ".qat0.02bpp", "config.json")) as f:
    qat_steps = json.load(f)["model"]["quant_steps"]
  from dfm_flax.loop.restore import load_model
  _, _, tuned = load_model(out + ".qat0.02bpp")
  for (a, b), (da, db), step in zip(tuned.net_params(), back, qat_steps):
    np.testing.assert_allclose(np.asarray(a), da, rtol=0, atol=1e-6)
    assert np.allclose(da / np.float32(step), np.round(da / np.float32(step)), atol=1e-3)
  # Without --bpp there is no size to scale the grid to: one line, no file.
  assert "give --bpp" in error_line(run_cli("experiments.codec", "encode", img, "--out",
                                            str(tmp_path / "n.dfm"), "--from", wd, "--grid",
                                            "sensitivity"))
  assert not (tmp_path / "n.dfm").exists()
  # --bpp alone codes on the sensitivity grid; with a bit depth, on the uniform grid; a
  # bit depth on the sensitivity grid is refused in one line.
  plain = ["experiments.codec", "encode", img, "--from", wd, "--bpp", "0.02", "--qat_steps", "0"]
  assert "sensitivity grid" in run_cli(*plain, "--out", str(tmp_path / "d.dfm")).stdout
  assert "(8-bit, ans" in run_cli(*plain, "--out", str(tmp_path / "u.dfm"), "--bits", "8").stdout
  assert "drop --bits" in error_line(run_cli(*plain, "--out", str(tmp_path / "e.dfm"), "--bits",
                                             "8", "--grid", "sensitivity"))
  assert not (tmp_path / "e.dfm").exists()
  # The benchmark comparing the two grids on this fit: both curves at the same sizes.
  proc = run_cli("studies.grid", wd, "--out", str(tmp_path / "grid"))
  assert proc.returncode == 0, proc.stderr
  with open(tmp_path / "grid" / "grid.json") as f:
    (row,) = json.load(f)
  assert len(row["uniform"]) == len(row["sensitivity"]) == 8
  for (u, _), (s, _) in zip(row["uniform"], row["sensitivity"]):
    assert s <= u  # the sensitivity grid's file is the largest not above the uniform one's
  assert "BD-rate" in proc.stdout


def test_wide_candidate_is_the_widest_near_the_budget():
  for shape, bpp in (((512, 512, 3), 0.3), ((300, 451, 3), 0.3), ((512, 512, 1), 0.6),
                     ((32, 32, 1), 3.0)):
    h, w, c = shape
    err = lambda s: sizes.predicted_bytes(*s, c, 12, "sensitivity") / (bpp * h * w / 8) - 1  # noqa: E731
    wide = sizes.wide_size_for_bpp(bpp, shape)
    assert abs(err(wide)) <= 0.2 and wide[1] >= sizes.MIN_DEPTH
    # No shape of depth >= MIN_DEPTH within 20% is wider.
    assert not any(abs(err((wd, d))) <= 0.2 for wd in sizes.WIDTHS if wd > wide[0]
                   for d in sizes.SENSITIVITY_DEPTHS if d >= sizes.MIN_DEPTH)
  # At 0.3 bpp on a 512x512 colour photograph: 7x8 first, 8x5 if that stays flat.
  assert sizes.size_for_bpp(0.3, (512, 512, 3), 12, "sensitivity") == (7, 8)
  assert sizes.wide_size_for_bpp(0.3, (512, 512, 3)) == (8, 5)


def test_flat_psnr_is_the_mean_colours():
  rng = np.random.default_rng(0)
  img = rng.uniform(0, 1, (20, 30, 3)).astype(np.float32)
  ref = np.round(img * 255)
  flat = np.round(img.reshape(-1, 3).mean(0) * 255)
  want = 10 * np.log10(255.0**2 / np.mean((ref - flat) ** 2))
  assert images.flat_psnr(img) == pytest.approx(want, abs=1e-6)


@pytest.mark.slow
def test_a_fit_that_stays_flat_gets_the_wider_net_too(tmp_path):
  from dfm_flax.codec import encoding
  from experiments.compress import get_config
  img = np.linspace(0, 1, 32)[None, :, None] * np.linspace(0.2, 0.9, 32)[:, None, None]
  lines = []

  def fit(lr, workdir):
    c = get_config("best")
    c.optim.lr, c.optim.warmup_steps, c.train.steps, c.train.batch_size = lr, 20, 200, 1024
    c.train.checkpoint_every, c.wandb.mode = 200, "disabled"
    c.image = str(tmp_path / "img.png")
    images.save_png(img.astype(np.float32), c.image)
    return encoding.fit_for_bpp(c, str(workdir), img.astype(np.float32), 3.0, 12,
                                "sensitivity", log=lines.append), c

  # lr 0: the net stays at its start, no better than flat: 3x8 first, then 4x5, then 4x5
  # again from a first layer at high frequency.
  (run, metrics), c = fit(0.0, tmp_path / "still")
  assert len(lines) == 2 and "wider 4x5" in lines[0] and "4x5 net again" in lines[1]
  assert os.path.exists(tmp_path / "still.4x5" / "metrics.json")
  saved = json.loads((tmp_path / "still.4x5.hf" / "config.json").read_text())
  assert saved["model"]["first_init_variance"] == encoding.HIGH_FREQUENCY_INIT
  first_config = json.loads((tmp_path / "still" / "config.json").read_text())
  assert first_config["model"]["first_init_variance"] == 0.0
  kept = {str(tmp_path / "still"): ((3, 8), 0.0), str(tmp_path / "still.4x5"): ((4, 5), 0.0),
          str(tmp_path / "still.4x5.hf"): ((4, 5), encoding.HIGH_FREQUENCY_INIT)}[run]
  assert ((c.model.width, c.model.depth), c.model.first_init_variance) == kept
  assert metrics == json.loads((tmp_path / run / "metrics.json").read_text())
  # No wider net within reach (as grass's 6x7 net at 0.1 bpp): the same net, high frequency.
  lines.clear()
  wide, sizes.wide_size_for_bpp = sizes.wide_size_for_bpp, lambda bpp, shape: (3, 8)
  try:
    (run, metrics), c = fit(0.0, tmp_path / "narrow")
  finally:
    sizes.wide_size_for_bpp = wide
  assert len(lines) == 1 and lines[0].startswith("the 3x8 net ended at ")
  assert "near its flat image" in lines[0] and "fitting it again from a first layer" in lines[0]
  assert os.path.exists(tmp_path / "narrow.hf" / "metrics.json")
  assert not os.path.exists(tmp_path / "narrow.4x5")
  # A fit that learns keeps the first net and fits nothing else.
  lines.clear()
  (run, metrics), c = fit(get_config("best").optim.lr, tmp_path / "learns")
  assert metrics["psnr"] > images.flat_psnr(img.astype(np.float32)) + images.FLAT_MARGIN_DB
  assert metrics["near_flat"] is False and metrics["flat_psnr"] == pytest.approx(
      images.flat_psnr(img.astype(np.float32)), abs=0.01)
  assert not lines and run == str(tmp_path / "learns") and (c.model.width, c.model.depth) == (3, 8)
  assert not os.path.exists(tmp_path / "learns.4x5")


def test_first_init_variance_sets_the_first_layers_alone():
  import ml_collections

  from dfm_flax.errors import UserError
  from dfm_flax.tasks.compress import init_variances
  cfg = ml_collections.ConfigDict(
      {"width": 4, "depth": 4, "init": "constant", "init_variance": 2e-10})
  assert init_variances(cfg, 3) == [2e-10] * 4  # Without the field: as before.
  cfg.first_init_variance = 1.0
  assert init_variances(cfg, 3) == [1.0] + [2e-10] * 3
  cfg.init, cfg.first_init_variance = "fan_in", 0.0  # 0: as the other layers.
  assert init_variances(cfg, 3) == [2e-10 / 4] + [2e-10 / 16] * 3
  cfg.first_init_variance = -1.0
  with pytest.raises(UserError, match="first_init_variance"):
    init_variances(cfg, 3)
