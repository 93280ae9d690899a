"""The .dfm codec: exact round trips, the entropy coder's gain, and every malformed file."""
import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from dfm_flax.codec import fileformat as codec
from dfm_flax.data import images
from dfm_flax.errors import UserError
from dfm_flax.loop import restore
from dfm_flax.nets import fourier
from tests.helpers import error_line, laplace_params, run_cli


def expected_dequantised(params, bits):
  """Per-layer uniform quantisation, written out independently of the codec."""
  out = []
  for a, b in params:
    flat = np.concatenate([a.ravel(), b.ravel()])
    step = np.float32(np.abs(flat).max() / (2 ** (bits - 1) - 1))
    deq = np.round(flat / step).astype(np.float32) * step
    out.append((deq[:a.size].reshape(a.shape), deq[a.size:].reshape(b.shape)))
  return out


@pytest.mark.parametrize("bits,coder", [(4, "ans"), (8, "ans"), (12, "ans"), (8, "raw"), (5, "raw")])
def test_quantised_round_trip_is_exact(bits, coder):
  params = laplace_params()
  data = codec.encode(params, (30, 40, 3), 6, 4, (0.0, 0.5), "product", bits, coder)
  header, decoded = codec.decode(data)
  assert header == {"height": 30, "width": 40, "channels": 3, "net_width": 6, "net_depth": 4,
                    "coord_range": (0.0, 0.5), "method": "product", "bits": bits, "coder": coder,
                    "start": None}
  assert data[4] == 1  # Version 1: files without a start are written as before.
  for (a, b), (ea, eb) in zip(decoded, expected_dequantised(params, bits)):
    np.testing.assert_array_equal(a, ea)
    np.testing.assert_array_equal(b, eb)


@pytest.mark.parametrize("bits,coder", [(6, "ans"), (10, "raw")])
def test_difference_from_a_start_round_trips_exactly(bits, coder):
  start = laplace_params()
  rng = np.random.default_rng(7)
  params = [(a + 0.01 * rng.standard_normal(a.shape).astype(np.float32),
             b + 0.01 * rng.standard_normal(b.shape).astype(np.float32)) for a, b in start]
  data = codec.encode(params, (30, 40, 3), 6, 4, (0.0, 0.5), "product", bits, coder, start=start)
  assert data[4] == 2
  header, decoded = codec.decode(data, start=start)
  assert header["start"] == codec.start_digest(start, 3).hex()
  diff = [(a - a0, b - b0) for (a, b), (a0, b0) in zip(params, start)]
  for (a, b), (da, db), (a0, b0) in zip(decoded, expected_dequantised(diff, bits), start):
    np.testing.assert_array_equal(a, a0 + da)
    np.testing.assert_array_equal(b, b0 + db)
  # The grid is the difference's: far finer than the weights' own at the same bit depth.
  _, plain = codec.decode(codec.encode(params, (30, 40, 3), 6, 4, bits=bits, coder=coder))
  err = lambda got: max(float(np.max(np.abs(x - y))) for g, p in zip(got, params) for x, y in zip(g, p))
  assert err(decoded) < err(plain) / 10


def test_a_difference_file_refuses_a_missing_or_other_start():
  start = laplace_params()
  other = [(a.copy(), b.copy()) for a, b in start]
  other[0][0][0, 0] += 1e-3
  data = codec.encode(start, (30, 40, 3), 6, 4, bits=8, start=start)
  with pytest.raises(UserError, match="--init"):
    codec.decode(data)
  with pytest.raises(UserError, match="not the start this file was coded from"):
    codec.decode(data, start=other)
  with pytest.raises(UserError, match="not this file's 6x4 net"):
    codec.decode(data, start=start[:3])
  with pytest.raises(UserError, match="not this file's 5x4 net"):
    codec.encode(start, (30, 40, 3), 5, 4, bits=8, start=start)


def test_a_diverged_net_is_refused_not_coded():
  params = laplace_params()
  params[1][0][0, 0] = np.nan
  with pytest.raises(UserError, match="not all finite"):
    codec.encode(params, (30, 40, 3), 6, 4, bits=8)


def test_fp16_round_trip():
  params = laplace_params()
  _, decoded = codec.decode(codec.encode(params, (8, 8, 3), 6, 4, bits=16))
  for (a, b), (da, db) in zip(params, decoded):
    np.testing.assert_array_equal(da, a.astype(np.float16).astype(np.float32))


def test_entropy_coding_beats_bit_packing():
  params = laplace_params(8, 6, 3)
  raw = len(codec.encode(params, (8, 8, 3), 8, 6, bits=8, coder="raw"))
  ans = len(codec.encode(params, (8, 8, 3), 8, 6, bits=8, coder="ans"))
  fp16 = len(codec.encode(params, (8, 8, 3), 8, 6, bits=16))
  assert ans < 0.9 * raw and raw < fp16


def _reseal(body: bytes) -> bytes:
  return body + struct.pack("<I", zlib.crc32(body))


def test_malformed_files_are_refused():
  data = codec.encode(laplace_params(), (8, 8, 3), 6, 4, bits=8)
  with pytest.raises(UserError, match="magic"):
    codec.decode(b"PNG!" + data[4:])
  with pytest.raises(UserError, match="version 9"):
    codec.decode(_reseal(data[:4] + bytes([9]) + data[5:-4]))
  flipped = bytearray(data)
  flipped[-10] ^= 0xFF
  with pytest.raises(UserError, match="checksum"):
    codec.decode(bytes(flipped))
  with pytest.raises(UserError, match="truncated|checksum"):
    codec.decode(data[:len(data) // 2])
  with pytest.raises(UserError, match="truncated"):
    codec.decode(data[:10])
  with pytest.raises(UserError, match="bits"):
    codec.encode(laplace_params(), (8, 8, 3), 6, 4, bits=13)


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
  root = tmp_path_factory.mktemp("codec")
  wd = str(root / "run")
  assert run_cli("experiments.run", "--config", "experiments/compress.py:smoke", "--workdir", wd).returncode == 0
  img = str(root / "coffee.png")
  images.save_png(images.default_image(), img)
  return root, wd, img


@pytest.mark.slow
def test_cli_encode_decode_any_size(fitted, tmp_path):
  root, wd, img = fitted
  out = str(tmp_path / "x.dfm")
  proc = run_cli("experiments.codec", "encode", img, "--out", out, "--from", wd, "--bits", "10",
                 "--qat_steps", "100")
  assert proc.returncode == 0, proc.stderr
  assert f"{os.path.getsize(out):,} bytes" in proc.stdout and "PSNR" in proc.stdout
  png = str(tmp_path / "x.png")
  assert run_cli("experiments.codec", "decode", out, "--out", png).returncode == 0
  header, params = codec.decode(open(out, "rb").read())
  expect = images.to_uint8(images.render_params(params, 400, 400, header["coord_range"], header["method"]))
  np.testing.assert_array_equal(np.asarray(Image.open(png)), expect)
  big = str(tmp_path / "big.png")
  assert run_cli("experiments.codec", "decode", out, "--out", big, "--size", "800x600").returncode == 0
  assert Image.open(big).size == (800, 600)


@pytest.mark.slow
def test_cli_bad_input_leaves_no_file(fitted, tmp_path):
  root, wd, img = fitted
  good = str(tmp_path / "g.dfm")
  assert run_cli("experiments.codec", "encode", img, "--out", good, "--from", wd,
                 "--qat_steps", "100").returncode == 0
  cut = tmp_path / "cut.dfm"
  cut.write_bytes(open(good, "rb").read()[:-7])
  png = tmp_path / "o.png"
  assert "checksum" in error_line(run_cli("experiments.codec", "decode", str(cut), "--out", str(png)))
  for size in ("0x10", "100000x100000", "big"):
    assert "--size" in error_line(run_cli("experiments.codec", "decode", good, "--out", str(png), "--size", size))
  assert "--bits" in error_line(run_cli("experiments.codec", "encode", img, "--out", str(tmp_path / "b.dfm"),
                                        "--from", wd, "--bits", "20"))
  small = tmp_path / "small.png"
  images.save_png(images.default_image()[:50, :60], str(small))
  assert "fitted to a" in error_line(run_cli("experiments.codec", "encode", str(small), "--out",
                                             str(tmp_path / "s.dfm"), "--from", wd))
  assert not png.exists() and not (tmp_path / "b.dfm").exists() and not (tmp_path / "s.dfm").exists()
  assert not [p for p in os.listdir(tmp_path) if "partial" in p]


@pytest.mark.slow
def test_a_start_is_read_once_per_state_of_its_checkpoints_and_config(fitted, tmp_path):
  _, wd, _ = fitted
  run = str(tmp_path / "start")
  shutil.copytree(wd, run)
  config, params = restore.load_start(run)
  assert restore.load_start(run + "/")[1] is params  # The same path: not read again.
  with pytest.raises(ValueError):  # Shared by later calls, so nobody may write into it.
    params[0][0][...] = 0
  with pytest.raises(AttributeError):
    config.width = 3
  # A new checkpoint changes checkpoints/'s mtime: read afresh, the same weights here.
  ckpts = os.path.join(run, "checkpoints")
  os.utime(ckpts, ns=(os.stat(ckpts).st_atime_ns, os.stat(ckpts).st_mtime_ns + 10**9))
  again = restore.load_start(run)[1]
  assert again is not params
  np.testing.assert_array_equal(again[-1][1], params[-1][1])
  # So does a rewritten config.json, which sets the net's shape and evaluation.
  path = os.path.join(run, "config.json")
  os.utime(path, ns=(os.stat(path).st_atime_ns, os.stat(path).st_mtime_ns + 10**9))
  assert restore.load_start(run)[1] is not again


def test_fake_quantisation_matches_the_file_and_passes_gradients():
  import jax
  import jax.numpy as jnp
  params = laplace_params(4, 3, 1)
  for bits in (4, 8):
    data = codec.encode(params, (8, 8, 1), 4, 3, bits=bits, coder="raw")
    _, decoded = codec.decode(data)
    for (a, b), (da, db) in zip(params, decoded):
      qa, qb = fourier.fake_quantize(jnp.asarray(a), jnp.asarray(b), bits)
      np.testing.assert_allclose(qa, da, rtol=0, atol=1e-7)
      np.testing.assert_allclose(qb, db, rtol=0, atol=1e-7)
  a, b = map(jnp.asarray, params[1])
  grad = jax.grad(lambda x: jnp.sum(fourier.fake_quantize(x, b, 4)[0] * 3.0))(a)
  np.testing.assert_array_equal(grad, np.full(a.shape, 3.0))  # straight through


def test_fake_quantisation_of_the_difference_matches_a_difference_coded_file():
  """With a start, the fine-tune's forward pass sees what the file decodes to: the start plus
  the rounded difference (on the bit depth's grid and on given steps), not the rounded weights."""
  import jax.numpy as jnp
  from flax import nnx
  params, start = laplace_params(4, 3, 1, seed=0), laplace_params(4, 3, 1, seed=1)
  params = [(a0 + 0.01 * a, b0 + 0.01 * b) for (a, b), (a0, b0) in zip(params, start)]
  for bits, steps in ((4, None), (8, None), (12, [1e-4, 3e-4, 1e-3])):
    data = codec.encode(params, (8, 8, 1), 4, 3, bits=bits, coder="ans", start=start, steps=steps)
    _, decoded = codec.decode(data, start)
    for i, ((a, b), (da, db), s0) in enumerate(zip(params, decoded, start)):
      qa, qb = fourier.fake_quantize(jnp.asarray(a), jnp.asarray(b), bits,
                                     steps[i] if steps else None, tuple(map(jnp.asarray, s0)))
      np.testing.assert_allclose(qa, da, rtol=0, atol=1e-6)
      np.testing.assert_allclose(qb, db, rtol=0, atol=1e-6)
    # Rounding the weights themselves gives another picture at these small differences.
    qa, _ = fourier.fake_quantize(jnp.asarray(params[1][0]), jnp.asarray(params[1][1]), bits)
    assert np.max(np.abs(np.asarray(qa) - decoded[1][0])) > 1e-4
  # The net's own forward pass: built with quant_start and given the start, it renders
  # the decoded file's weights.
  net = fourier.FourierNet(4, 3, 1, init_variance=1e-3, quant_bits=8, quant_start=True,
                           rngs=nnx.Rngs(0))
  for layer, (a, b) in zip(net.layers, params):
    layer.a[...], layer.b[...] = jnp.asarray(a), jnp.asarray(b)
  net.set_start(start)
  _, decoded = codec.decode(codec.encode(params, (8, 8, 1), 4, 3, bits=8, start=start), start)
  for (qa, qb), (da, db) in zip(net.params_list(), decoded):
    np.testing.assert_allclose(qa, da, rtol=0, atol=1e-6)
  with pytest.raises(UserError, match="not this net"):
    net.set_start(start[:2])


@pytest.mark.slow
def test_quantisation_aware_fine_tune_improves_the_decoded_file(fitted, tmp_path):
  root, wd, img = fitted
  plain, tuned = str(tmp_path / "plain.dfm"), str(tmp_path / "tuned.dfm")
  args = ["--from", wd, "--bits", "4"]
  p1 = run_cli("experiments.codec", "encode", img, "--out", plain, *args, "--qat-steps", "0")
  p2 = run_cli("experiments.codec", "encode", img, "--out", tuned, *args, "--qat-steps", "60")
  assert p1.returncode == 0 and p2.returncode == 0, p2.stderr
  assert "initialised from the weights in" in p2.stderr
  psnr = lambda p: float(p.stdout.split("PSNR ")[1].split(" dB")[0])
  assert psnr(p2) > psnr(p1)


def test_siren_parameter_count():
  import jax
  from flax import nnx

  from dfm_flax.nets import siren
  model = siren.Siren(64, 5, 3, rngs=nnx.Rngs(0))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) == siren.num_params(64, 5, 3)
  assert model(np.zeros((7, 2), np.float32)).shape == (7, 3)


@pytest.mark.slow
def test_rate_distortion_tool(tmp_path):
  import csv
  out = tmp_path / "rd"
  proc = run_cli("experiments.rd", "coffee", "chelsea", "--out", str(out), "--sizes", "3x4",
                 "--bits", "8", "--steps", "40", "--qat_steps", "10")
  assert proc.returncode == 0, proc.stderr
  assert "fitted 2 image(s) at 3x4" in proc.stdout  # both RGB photos in one stack
  rows = list(csv.DictReader(open(out / "rd.csv")))
  assert [(r["image"], r["codec"]) for r in rows] == [
      (image, codec) for image in ("coffee", "chelsea")
      for codec in ("dfm", "jpeg", "webp", "siren-fp16")]
  for i, (name, pixels) in enumerate((("coffee", 400 * 400), ("chelsea", 300 * 451))):
    dfm, siren_row = rows[4 * i], rows[4 * i + 3]
    assert int(dfm["bytes"]) == os.path.getsize(out / "files" / f"{name}_3x4_8bit.dfm")
    assert float(dfm["bpp"]) == pytest.approx(8 * int(dfm["bytes"]) / pixels)
    assert int(siren_row["bytes"]) <= int(dfm["bytes"])  # SIREN at no more bytes than the DFM
  assert os.path.getsize(out / "rd.png") > 1000


def test_bpp_target_picks_a_net_predicted_near_the_target():
  from dfm_flax.codec.sizes import predicted_bytes, size_for_bpp
  for shape in ((512, 768, 3), (512, 512, 1), (400, 400, 3), (1411, 1411, 3)):
    h, w, c = shape
    for bpp in (0.1, 0.3, 0.6) if h < 1000 else (0.1, 0.3):
      width, depth = size_for_bpp(bpp, shape, 8)
      # Within 20% (the bit depth closes the rest: next test), at a depth that trains.
      assert predicted_bytes(width, depth, c, 8) == pytest.approx(bpp * h * w / 8, rel=0.2)
      assert 4 <= depth <= 7
      closer = [(wd, d) for wd in range(3, 11) for d in range(4, 8)
                if abs(predicted_bytes(wd, d, c, 8) / (bpp * h * w / 8) - 1) < 0.07 and d >= 5]
      if closer:  # The widest of the close shapes.
        assert width == max(wd for wd, _ in closer)
  # Past the largest net (retina at 0.6 bpp) the largest; below the smallest the smallest:
  # not an error (encode says it is the nearest).
  assert size_for_bpp(0.6, (1411, 1411, 3), 8) == (10, 7)
  assert size_for_bpp(0.0001, (400, 400, 3), 8) == (3, 4)


@pytest.mark.slow
def test_encode_to_bpp_moves_the_bit_depth_to_hit_the_target(tmp_path):
  from dfm_flax.codec.encoding import encode_run, encode_to_bpp
  wd = str(tmp_path / "run")
  assert run_cli("experiments.run", "--config", "experiments/compress.py:smoke",
                 "--workdir", wd).returncode == 0
  image = images.default_image()
  at8 = encode_run(wd, image, str(tmp_path / "a.dfm"), 8, "ans", 0)
  for factor in (1.35, 0.7):
    target_bpp = factor * at8["bpp"]
    out = str(tmp_path / f"b{factor}.dfm")
    row, bits, note = encode_to_bpp(wd, image, out, target_bpp, 8, "ans", 0)
    assert abs(row["bpp"] / target_bpp - 1) <= 0.1 and not note
    assert (bits > 8) == (factor > 1) and bits != 8
    assert os.path.getsize(out) == row["bytes"]
  row, bits, note = encode_to_bpp(wd, image, str(tmp_path / "c.dfm"), 50 * at8["bpp"], 8, "ans", 0)
  assert bits == 12 and "nearest" in note


def test_image_too_small_for_the_net(tmp_path):
  tiny = tmp_path / "tiny.png"
  images.save_png(images.default_image()[:8, :8], str(tiny))
  wd = str(tmp_path / "run")
  assert run_cli("experiments.run", "--config", "experiments/compress.py:smoke", "--workdir", wd,
                 f"--config.image={tiny}").returncode == 0
  line = error_line(run_cli("experiments.codec", "encode", str(tiny), "--out", str(tmp_path / "t.dfm"),
                            "--from", wd))
  assert "too small for this net" in line
  assert not (tmp_path / "t.dfm").exists()


def test_rd_summary_pairs_each_file_with_its_competitors():
  from dfm_flax.codec.rate_distortion import summarize
  rows = [
      {"image": "a", "codec": "dfm", "setting": "4x6 8-bit", "bpp": "0.1", "psnr": "25", "encode_s": "10"},
      {"image": "a", "codec": "jpeg", "setting": "q=None", "bpp": "0.2", "psnr": "21", "encode_s": "0"},
      {"image": "a", "codec": "siren-fp16", "setting": "5x9", "bpp": "0.1", "psnr": "22", "encode_s": "4"},
      {"image": "b", "codec": "dfm", "setting": "4x6 8-bit", "bpp": "0.3", "psnr": "27", "encode_s": "20"},
      {"image": "b", "codec": "jpeg", "setting": "q=5", "bpp": "0.3", "psnr": "28", "encode_s": "0"},
  ]
  [_, _, line] = summarize(rows).strip().splitlines()
  cells = [c.strip() for c in line.strip("|").split("|")]
  # setting, images, bpp, DFM, JPEG (1 image without a JPEG that small), WebP, SIREN,
  # DFM - JPEG = mean(25 - 21, 27 - 28), DFM - SIREN over the one image that has one.
  assert cells == ["4x6 8-bit", "2", "0.200", "26.00", "24.50 (1*)", "-", "22.00", "+1.50",
                   "+3.00", "15 / 4"]


def test_rd_merge_replaces_a_refitted_file_with_its_comparisons():
  from dfm_flax.codec.rate_distortion import merge
  first = [{"image": "a", "codec": "dfm", "setting": "8x6 8-bit", "psnr": "12"},
           {"image": "a", "codec": "jpeg", "setting": "q=40", "psnr": "30"},
           {"image": "b", "codec": "dfm", "setting": "8x6 8-bit", "psnr": "29"}]
  refit = [{"image": "a", "codec": "dfm", "setting": "8x6 8-bit", "psnr": "28"},
           {"image": "a", "codec": "jpeg", "setting": "q=41", "psnr": "30.1"}]
  merged = merge([first, refit])
  assert [(r["image"], r["codec"], r["psnr"]) for r in merged] == [
      ("a", "dfm", "28"), ("a", "jpeg", "30.1"), ("b", "dfm", "29")]


def test_rd_pareto_front_keeps_only_undominated_settings():
  from dfm_flax.codec.rate_distortion import pareto
  # (0.44, 23.3) is beaten by (0.37, 28.5): fewer bits and more dB.
  points = [(0.06, 24.8), (0.44, 23.3), (0.37, 28.5), (0.04, 22.0), (0.82, 30.0)]
  assert pareto(points) == [(0.04, 22.0), (0.06, 24.8), (0.37, 28.5), (0.82, 30.0)]


def test_bd_rate_on_curves_known_in_closed_form():
  from dfm_flax.codec.rate_distortion import bd_rate
  # log bytes linear in PSNR: log r = a + b p. The test curve is the same line shifted by
  # log(0.8), sampled at other PSNRs over a range that only partly overlaps: any
  # interpolation of straight lines is exact, so the answer is exactly 0.8 - 1.
  b = 0.23
  ref = [(float(np.exp(1.0 + b * p)), p) for p in (20.0, 23.0, 27.0, 31.0)]
  test = [(float(np.exp(1.0 + np.log(0.8) + b * p)), p) for p in (22.5, 25.0, 29.5, 36.0)]
  assert bd_rate(ref, test) == pytest.approx(-0.2, abs=1e-9)
  assert bd_rate(test, ref) == pytest.approx(0.25, abs=1e-9)
  # A dominated point (more bytes, fewer dB) is left out: the answer does not move.
  assert bd_rate(ref + [(float(np.exp(1.0 + b * 31.0)) * 1.5, 24.0)], test) == pytest.approx(
      -0.2, abs=1e-9)


def test_bd_rate_matches_numerical_integration_and_says_when_undefined():
  from scipy.interpolate import PchipInterpolator

  from dfm_flax.codec.rate_distortion import bd_rate
  ref = [(1000.0, 20.0), (1500.0, 24.0), (2600.0, 27.0), (5200.0, 30.0)]
  test = [(900.0, 21.0), (1200.0, 23.5), (2500.0, 28.0), (4000.0, 31.0)]
  # Independently: the mean log-rate gap on a fine grid of the common PSNR range (21-30 dB).
  grid = np.linspace(21.0, 30.0, 200_001)
  curve = lambda pts: PchipInterpolator([p for _, p in pts], np.log([r for r, _ in pts]))(grid)  # noqa: E731
  expected = np.exp(np.trapezoid(curve(test) - curve(ref), grid) / 9.0) - 1
  assert bd_rate(ref, test) == pytest.approx(expected, abs=1e-6)
  assert bd_rate(ref, test) < 0  # the test curve is below the reference everywhere here
  assert bd_rate(ref, [(100.0, 40.0), (200.0, 45.0)]) is None  # no common PSNR range
  assert bd_rate(ref, [(100.0, 25.0)]) is None  # one point is not a curve


def test_the_codec_fits_best_for_three_times_its_steps(tmp_path):
  """The codec's default config is `compress.py:best` with train.steps = CODEC_STEPS: checked
  on what a run of the codec's own command line saved, and on the configs themselves."""
  import json

  from experiments.compress import CODEC_STEPS, get_config
  best, fit = get_config("best"), get_config("codec")
  assert CODEC_STEPS == 3 * best.train.steps
  with fit.unlocked():
    fit.train.steps = best.train.steps
  assert fit.to_dict() == best.to_dict()
  img, out, wd = str(tmp_path / "img.png"), str(tmp_path / "img.dfm"), str(tmp_path / "run")
  images.save_png(images.default_image()[:48, :48], img)
  proc = run_cli("experiments.codec", "encode", img, "--out", out, "--workdir", wd, "--bits", "8",
                 "--qat_steps", "0", "--config.model.width=4", "--config.model.depth=4",
                 "--config.train.stop_at=3", "--config.wandb.mode=disabled")
  assert proc.returncode == 0, proc.stderr
  saved = json.load(open(os.path.join(wd, "config.json")))
  assert saved["train"]["steps"] == CODEC_STEPS
  assert saved["optim"] == get_config("best").optim.to_dict()
  assert os.path.getsize(out) > 0
