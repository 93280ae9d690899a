"""Several images fitted at once: one stack of nets, vmapped, each net as if alone."""
import numpy as np
import pytest
from PIL import Image

from dfm_flax.codec import encoding, fileformat
from dfm_flax.data import images
from dfm_flax.errors import UserError
from dfm_flax.loop.train import train_and_evaluate
from experiments.compress import get_config

pytestmark = pytest.mark.slow  # Whole-run end-to-end tests (python -m pytest -m 'not slow' skips them).


def write_images(tmp_path, shapes):
  rng = np.random.default_rng(0)
  paths = []
  for i, shape in enumerate(shapes):
    path = str(tmp_path / f"{i}.png")
    Image.fromarray((rng.random(shape) * 255).astype(np.uint8).squeeze()).save(path)
    paths.append(path)
  return paths


def config_for(image: str, seed: int = 0):
  c = get_config("smoke")
  c.image, c.seed = image, seed
  c.train.batch_size, c.train.steps, c.train.quiet = 256, 30, True
  return c


def test_a_stack_trains_each_image_exactly_as_alone(tmp_path):
  # Two sizes: the smaller image is padded in the stack, and must not see the padding.
  paths = write_images(tmp_path, [(24, 32, 3), (20, 30, 3)])
  together = train_and_evaluate(config_for(",".join(paths)), str(tmp_path / "both"))
  assert together["num_images"] == 2
  alone = [train_and_evaluate(config_for(p, seed=i), str(tmp_path / f"alone{i}"))
           for i, p in enumerate(paths)]
  for t, a in zip(together["images"], alone):
    assert t["psnr"] == pytest.approx(a["psnr"], abs=1e-3)
    assert t["num_params"] == a["num_params"]
  assert together["psnr"] == pytest.approx(np.mean([a["psnr"] for a in alone]), abs=1e-3)
  assert (tmp_path / "both" / "image1" / "comparison.png").exists()

  # The files coded from the stack are the files coded from the separate runs, up to
  # float rounding (a vmapped matmul may round differently from a single one by an ulp,
  # which can move a weight that sits on a rounding boundary by one quantisation level).
  ims = [images.load_image(p) for p in paths]
  outs = [str(tmp_path / f"stack{i}.dfm") for i in range(2)]
  encoding.encode_runs(str(tmp_path / "both"), ims, outs, 8, "ans", 0)
  for i in range(2):
    encoding.encode_run(str(tmp_path / f"alone{i}"), ims[i], str(tmp_path / f"a{i}.dfm"), 8, "ans", 0)
    _, stacked = fileformat.decode(open(outs[i], "rb").read())
    _, single = fileformat.decode(open(tmp_path / f"a{i}.dfm", "rb").read())
    for (a1, b1), (a2, b2) in zip(stacked, single):
      w1, w2 = np.concatenate([a1.ravel(), b1.ravel()]), np.concatenate([a2.ravel(), b2.ravel()])
      step = np.max(np.abs(w2)) / 127
      assert np.max(np.abs(w1 - w2)) <= step * 1.01
      assert np.mean(np.abs(w1 - w2) > 0.01 * step) < 0.02  # Same level, bar a few.
  with pytest.raises(UserError, match="fitted 2 images"):
    encoding.encode_run(str(tmp_path / "both"), ims[0], str(tmp_path / "x.dfm"), 8, "ans", 0)
  assert not (tmp_path / "x.dfm").exists()


def test_images_with_different_channel_counts_are_refused(tmp_path):
  paths = write_images(tmp_path, [(16, 16, 3), (16, 16, 1)])
  with pytest.raises(UserError, match="same number of channels"):
    train_and_evaluate(config_for(",".join(paths)), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
