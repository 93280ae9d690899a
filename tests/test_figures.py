"""Figure writers and atomic files: what the PNGs hold, and racing writers."""
import numpy as np
from PIL import Image

from dfm_flax import files
from dfm_flax.data import images
from dfm_flax.evaluation import figures


def test_image_grid_holds_each_image_exactly_at_its_tile(tmp_path):
  rng = np.random.default_rng(0)
  imgs = rng.random((7, 5, 4, 3))
  path = str(tmp_path / "g.png")
  figures.image_grid(imgs, path, cols=3, title="seven")
  png = np.asarray(Image.open(path).convert("RGB"))
  mosaic_w = 3 * (4 + 1) + 1
  s = figures.grid_scale(mosaic_w)
  assert png.shape == (figures.TITLE_PX + s * (3 * (5 + 1) + 1), s * mosaic_w, 3)
  assert (png[:figures.TITLE_PX] < 128).any()  # The title is drawn in the strip.
  expect = images.to_uint8(imgs)
  for i in range(7):
    r, c = divmod(i, 3)
    top, left = figures.TITLE_PX + s * (1 + r * 6), s * (1 + c * 5)
    tile = png[top:top + s * 5:s, left:left + s * 4:s]  # One pixel per upscaled block.
    np.testing.assert_array_equal(tile, expect[i])
  # The eighth tile of the third row is empty: white.
  assert (png[figures.TITLE_PX + s * (1 + 12):, s * (1 + 5):s * (1 + 5) + s * 4] == 255).all()


def test_grey_grid_without_title_has_no_strip(tmp_path):
  imgs = np.linspace(0, 1, 2 * 3 * 3).reshape(2, 3, 3, 1)
  path = str(tmp_path / "g.png")
  figures.image_grid(imgs, path, cols=2)
  png = np.asarray(Image.open(path).convert("RGB"))
  s = figures.grid_scale(2 * 4 + 1)
  assert png.shape[0] == s * (3 + 2)
  np.testing.assert_array_equal(png[s:4 * s:s, s:4 * s:s, 0], images.to_uint8(imgs[0, ..., 0]))


def test_writers_racing_for_one_file_both_finish(tmp_path):
  # Two writers of the same file open at once (as panel shards saving one photograph):
  # each has its own temporary file, both renames succeed, the last one wins.
  path = str(tmp_path / "x.bin")
  with files.atomic_path(path) as first:
    with files.atomic_path(path) as second:
      assert first != second
      open(second, "wb").write(b"second")
    open(first, "wb").write(b"first")
  assert open(path, "rb").read() == b"first"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["x.bin"]
