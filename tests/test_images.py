"""Image loading (every mode a user may hand us), metrics, and the JPEG size match."""
import numpy as np
import pytest
from PIL import Image

from dfm_flax.data import images
from dfm_flax.errors import UserError


def gradient(h=24, w=32):
  y, x = np.mgrid[0:h, 0:w]
  return np.stack([x / w, y / h, (x + y) / (w + h)], -1).astype(np.float32)


def test_default_image_is_the_coffee_crop():
  img = images.default_image()
  assert img.shape == (400, 400, 3) and img.dtype == np.float32
  import skimage.data
  np.testing.assert_array_equal(images.to_uint8(img), skimage.data.coffee()[:, 100:500])


def test_rgb_png_round_trips(tmp_path):
  img = gradient()
  images.save_png(img, tmp_path / "a.png")
  np.testing.assert_array_equal(images.to_uint8(images.load_image(str(tmp_path / "a.png"))),
                                images.to_uint8(img))


def test_gray_stays_one_channel(tmp_path):
  Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(tmp_path / "g.png")
  img = images.load_image(str(tmp_path / "g.png"))
  assert img.shape == (8, 8, 1)
  assert img[0, 1, 0] == pytest.approx(1 / 255)


def test_rgba_is_composited_on_white(tmp_path):
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., 0] = 255  # red, fully transparent on the left half
  rgba[:, 2:, 3] = 255
  Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
  img = images.load_image(str(tmp_path / "t.png"))
  assert img.shape == (4, 4, 3)
  np.testing.assert_allclose(img[0, 0], [1, 1, 1])
  np.testing.assert_allclose(img[0, 3], [1, 0, 0])


def test_16_bit_is_scaled(tmp_path):
  arr = np.array([[0, 65535], [32768, 1000]], np.uint16)
  Image.fromarray(arr).save(tmp_path / "d.png")
  img = images.load_image(str(tmp_path / "d.png"))
  assert img.shape == (2, 2, 1)
  np.testing.assert_allclose(img[..., 0], arr / 65535, atol=1e-6)


@pytest.mark.parametrize("content,match", [(None, "not found"), (b"hello, not a png", "not an image"),
                                           (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, "image")])
def test_bad_files_are_refused(tmp_path, content, match):
  path = tmp_path / "x.png"
  if content is not None:
    path.write_bytes(content)
  with pytest.raises(UserError, match=match):
    images.load_image(str(path))


def test_directory_is_refused(tmp_path):
  with pytest.raises(UserError, match="directory"):
    images.load_image(str(tmp_path))


def test_psnr_against_formula():
  a = np.zeros((4, 4, 1))
  b = np.full((4, 4, 1), 0.1)
  assert images.psnr(a, b) == pytest.approx(20.0)
  assert images.psnr(a, a) == float("inf")


def test_ssim_is_one_for_identical_and_lower_for_noise():
  img = gradient(32, 32)
  assert images.ssim(img, img) == pytest.approx(1.0, abs=1e-5)
  noisy = np.clip(img + np.random.default_rng(0).normal(0, 0.2, img.shape), 0, 1)
  assert images.ssim(img, noisy) < 0.8


def test_jpeg_is_the_largest_quality_that_fits():
  img = images.default_image()[:128, :128]
  budget = 4000
  j = images.jpeg_at_size(img, budget)
  assert j["bytes"] <= budget
  assert len(images.jpeg_bytes(img, j["quality"] + 1)) > budget
  assert j["bpp"] == pytest.approx(8 * j["bytes"] / 128**2)
  assert 20 < j["psnr"] < 60


def test_the_jpeg_anchor_has_optimised_huffman_tables():
  # The same quality and pixels as Pillow's default file, in fewer bytes: at a budget the
  # anchor reaches at least the default's quality.
  img = images.default_image()[:128, :128]
  for quality in (30, 75, 95):
    tuned, plain = images.jpeg_bytes(img, quality), images.jpeg_bytes(img, quality, optimize=False)
    assert len(tuned) < len(plain)
    np.testing.assert_array_equal(images.decode_image_bytes(tuned, 3), images.decode_image_bytes(plain, 3))
  budget = len(images.jpeg_bytes(img, 60, optimize=False))
  assert images.jpeg_at_size(img, budget)["quality"] > images.jpeg_at_size(img, budget, optimize=False)["quality"]


def test_jpeg_reports_none_when_nothing_fits():
  j = images.jpeg_at_size(images.default_image()[:64, :64], 10)
  assert j["quality"] is None and j["bytes"] > 10


def test_pixel_grid_centres():
  g = images.pixel_grid(2, 4, (0.0, 1.0))
  assert g.shape == (8, 2)
  np.testing.assert_allclose(g[:4, 0], [0.125, 0.375, 0.625, 0.875])
  np.testing.assert_allclose(g[::4, 1], [0.25, 0.75])
  np.testing.assert_allclose(images.pixel_grid(2, 2, (-1.0, 1.0))[0], [-0.5, -0.5])


def test_a_large_render_shows_its_progress_and_a_small_one_does_not(capsys, monkeypatch):
  fn = lambda xy: np.sin(xy[:, :1] * 3) * np.cos(xy[:, 1:] * 5)  # noqa: E731
  monkeypatch.setattr(images, "RENDER_PROGRESS_PIXELS", 48)  # An 8x6 image is "large".
  many = images.render_fn(fn, 8, 6, (0.0, 0.5), chunk=3)
  assert "rendering 6x8: chunk 16/16 (100%)" in capsys.readouterr().err
  monkeypatch.setattr(images, "RENDER_PROGRESS_PIXELS", 49)
  few = images.render_fn(fn, 8, 6, (0.0, 0.5), chunk=3)
  assert capsys.readouterr().err == ""
  xy = images.pixel_grid(8, 6, (0.0, 0.5))
  np.testing.assert_allclose(many, ((fn(xy) + 1) / 2).reshape(8, 6, 1))
  np.testing.assert_array_equal(many, few)
