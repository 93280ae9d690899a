"""Dataset sources: each loader against data written independently, and its errors."""
import gzip
import os
import pickle

import numpy as np
import pytest
from PIL import Image

from dfm_flax.data import datasets
from dfm_flax.errors import UserError
from experiments import common

SHARED_MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist")


def write_idx(path, array, gz=True):
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in array.shape)
  with (gzip.open if gz else open)(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_idx_reads_what_was_written(tmp_path):
  imgs = np.random.default_rng(0).integers(0, 256, (7, 5, 4)).astype(np.uint8)
  write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
  write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.arange(7))
  write_idx(tmp_path / "t10k-images-idx3-ubyte", imgs[:2], gz=False)  # plain files work too
  write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([9, 8]), gz=False)
  ds = datasets.load(common.data("idx", directory=str(tmp_path)))
  assert ds.images.shape == (9, 5, 4, 1)
  np.testing.assert_allclose(ds.images[:2, ..., 0], imgs[:2] / 255.0)  # t10k sorts first
  assert ds.labels.tolist() == [9, 8, 0, 1, 2, 3, 4, 5, 6]


def test_truncated_idx_is_refused(tmp_path):
  write_idx(tmp_path / "x-images-idx3-ubyte", np.zeros((4, 3, 3)), gz=False)
  raw = (tmp_path / "x-images-idx3-ubyte").read_bytes()
  (tmp_path / "x-images-idx3-ubyte").write_bytes(raw[:-5])
  with pytest.raises(UserError, match="truncated"):
    datasets.load(common.data("idx", directory=str(tmp_path)))


@pytest.mark.skipif(not os.path.isdir(SHARED_MNIST), reason="shared MNIST not present")
def test_real_mnist_test_digits():
  ds = datasets.load(common.data("idx", directory=SHARED_MNIST))
  assert ds.images.shape == (10000, 28, 28, 1)
  assert sorted(set(ds.labels.tolist())) == list(range(10))
  twos = datasets.load(common.data("idx", directory=SHARED_MNIST, classes="2"))
  assert len(twos) == int((ds.labels == 2).sum()) and set(twos.labels) == {2}


def test_bundled_digits_match_the_real_ones():
  bundled = datasets.load(common.bundled_mnist())
  assert bundled.images.shape == (1000, 28, 28, 1)
  if os.path.isdir(SHARED_MNIST):
    real = datasets.load(common.data("idx", directory=SHARED_MNIST, limit=1000))
    np.testing.assert_array_equal(bundled.images, real.images)
    np.testing.assert_array_equal(bundled.labels, real.labels)


def test_cifar_pickles_channel_layout(tmp_path):
  rng = np.random.default_rng(1)
  rows = rng.integers(0, 256, (3, 3072)).astype(np.uint8)
  with open(tmp_path / "data_batch_1", "wb") as f:
    pickle.dump({b"data": rows, b"labels": [3, 1, 4]}, f)
  with open(tmp_path / "test_batch", "wb") as f:
    pickle.dump({b"data": rows[:1], b"labels": [5]}, f)
  ds = datasets.load(common.data("cifar_pickle", directory=str(tmp_path), split="train"))
  assert ds.images.shape == (3, 32, 32, 3) and ds.labels.tolist() == [3, 1, 4]
  # Row layout: 1024 red, then 1024 green, then 1024 blue values, row-major.
  assert ds.images[1, 0, 5, 0] == pytest.approx(rows[1, 5] / 255)
  assert ds.images[1, 2, 0, 1] == pytest.approx(rows[1, 1024 + 64] / 255)
  assert ds.images[2, 31, 31, 2] == pytest.approx(rows[2, 3071] / 255)
  assert len(datasets.load(common.data("cifar_pickle", directory=str(tmp_path), split="all"))) == 4


def test_broken_cifar_pickle(tmp_path):
  (tmp_path / "data_batch_1").write_bytes(b"not a pickle")
  with pytest.raises(UserError, match="cannot read CIFAR batch"):
    datasets.load(common.data("cifar_pickle", directory=str(tmp_path)))


def test_folder_labels_and_mixed_sizes(tmp_path):
  for cls, n in (("cats", 2), ("dogs", 3)):
    (tmp_path / cls).mkdir()
    for i in range(n):
      Image.fromarray(np.full((6, 5, 3), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
  ds = datasets.load(common.data("folder", directory=str(tmp_path)))
  assert ds.images.shape == (5, 6, 5, 3) and ds.labels.tolist() == [0, 0, 1, 1, 1]
  Image.fromarray(np.zeros((7, 7, 3), np.uint8)).save(tmp_path / "dogs" / "odd.png")
  with pytest.raises(UserError, match="mixed sizes"):
    datasets.load(common.data("folder", directory=str(tmp_path)))


def test_npz_and_its_errors(tmp_path):
  np.savez(tmp_path / "d.npz", images=np.zeros((4, 3, 3), np.uint8), labels=np.array([0, 1, 1, 0]))
  ds = datasets.load(common.data("npz", directory=str(tmp_path / "d.npz"), classes="1"))
  assert ds.images.shape == (2, 3, 3, 1) and ds.labels.tolist() == [1, 1]
  np.savez(tmp_path / "bad.npz", pixels=np.zeros(3))
  with pytest.raises(UserError, match="no 'images'"):
    datasets.load(common.data("npz", directory=str(tmp_path / "bad.npz")))


def test_class_filter_that_leaves_nothing():
  with pytest.raises(UserError, match="leaves no images"):
    datasets.load(common.data("npz", directory=datasets.BUNDLED_MNIST, classes="42"))


def test_missing_sources_name_the_options(tmp_path):
  with pytest.raises(UserError, match="does not exist"):
    datasets.load(common.data("idx", directory=str(tmp_path / "nope")))
  with pytest.raises(UserError, match="needs --config.data.dir"):
    datasets.load(common.data("idx"))
  offline = common.data("tfds", "mnist", directory=str(tmp_path))
  offline.download = False
  with pytest.raises(UserError, match="not prepared.*download is False.*idx\\|cifar_pickle"):
    datasets.load(offline)


def test_offline_tfds_fails_at_once(tmp_path, monkeypatch):
  """download=True (the default) on a machine that cannot reach the dataset's host: one
  line naming the host, before TFDS's minutes of retries."""
  from dfm_flax.data import downloads
  tried = []
  monkeypatch.setattr(downloads, "unreachable_host", lambda urls: tried.extend(urls) or "nowhere.invalid")
  with pytest.raises(UserError, match="not prepared.*nowhere.invalid cannot be reached"):
    datasets.load(common.data("tfds", "mnist", directory=str(tmp_path)))
  assert any("train-images-idx3-ubyte" in u for u in tried)  # TFDS's own URL list was probed
  assert not os.listdir(tmp_path) or not any("downloads" in d for d in os.listdir(tmp_path))


def test_unreachable_host_probe():
  from dfm_flax.data import downloads
  assert downloads.unreachable_host(["http://nowhere.invalid/a.gz"], timeout_s=2) == "nowhere.invalid"
  assert downloads.unreachable_host([]) is None


@pytest.fixture
def idx_server(tmp_path):
  """A local HTTP server with train and t10k IDX files (random digits)."""
  import functools
  import hashlib
  import http.server
  import threading
  root = tmp_path / "served"
  root.mkdir()
  rng = np.random.default_rng(0)
  arrays = {"train-images-idx3-ubyte.gz": rng.integers(0, 256, (6, 28, 28)),
            "train-labels-idx1-ubyte.gz": rng.integers(0, 10, 6),
            "t10k-images-idx3-ubyte.gz": rng.integers(0, 256, (4, 28, 28)),
            "t10k-labels-idx1-ubyte.gz": rng.integers(0, 10, 4)}
  for name, array in arrays.items():
    write_idx(root / name, array)
  handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  base = f"http://127.0.0.1:{server.server_address[1]}/"
  sums = {base + n: hashlib.sha256((root / n).read_bytes()).hexdigest() for n in arrays}
  yield sums, arrays
  server.shutdown()


def test_idx_files_fetched_checked_and_read(idx_server, tmp_path):
  from dfm_flax.data import downloads
  sums, arrays = idx_server
  cache = str(tmp_path / "cache")
  ds = datasets.load_idx_files(downloads.idx_files(sums, "train+test", cache))
  assert len(ds) == 10
  np.testing.assert_array_equal(sorted(ds.labels.tolist()), sorted(
      arrays["train-labels-idx1-ubyte.gz"].tolist() + arrays["t10k-labels-idx1-ubyte.gz"].tolist()))
  test = datasets.load_idx_files(downloads.idx_files(sums, "test", cache))
  np.testing.assert_allclose(test.images[..., 0] * 255, arrays["t10k-images-idx3-ubyte.gz"], atol=1e-3)
  with pytest.raises(UserError, match="train, test or train\\+test"):
    downloads.idx_files(sums, "train[:10%]", cache)


def test_download_with_wrong_checksum_is_refused_and_not_kept(idx_server, tmp_path):
  from dfm_flax.data import downloads
  sums, _ = idx_server
  url = next(u for u in sums if "t10k-labels" in u)
  target = tmp_path / "t10k-labels-idx1-ubyte.gz"
  with pytest.raises(UserError, match="another SHA-256"):
    downloads.fetch(url, str(target), "0" * 64)
  assert not os.listdir(tmp_path) or target.name not in os.listdir(tmp_path)


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_data_source_with_mock_data(name, shape, monkeypatch):
  import tensorflow_datasets as tfds
  # mock_data fakes reading, not the files on disk that say a dataset is prepared.
  monkeypatch.setattr(tfds.core.DatasetBuilder, "is_prepared", lambda self: True)
  with tfds.testing.mock_data(num_examples=10):
    ds = datasets.load(common.data("tfds", name, split="train"))
  assert ds.images.shape == (10, *shape)
  assert ds.images.dtype == np.float32 and 0 <= ds.images.min() and ds.images.max() <= 1
  assert ds.labels.shape == (10,)


def test_builtin_photos_are_deterministic():
  a = datasets.load(common.data("photos", limit=8))
  b = datasets.load(common.data("photos", limit=8))
  assert a.images.shape == (8, 32, 32, 3)
  np.testing.assert_array_equal(a.images, b.images)
  assert a.images.std() > 0.05


def test_unprepared_mnist_is_read_from_tfds_urls(idx_server, tmp_path, monkeypatch):
  """Without TensorFlow, an unprepared MNIST comes from the files of TFDS's URL list."""
  import importlib.util
  import types

  import tensorflow_datasets as tfds
  if importlib.util.find_spec("tensorflow") is not None:
    pytest.skip("with TensorFlow installed TFDS prepares the dataset itself")
  sums, arrays = idx_server
  infos = {url: types.SimpleNamespace(checksum=sha) for url, sha in sums.items()}
  builder_class = type(tfds.builder("mnist", data_dir=str(tmp_path)))
  monkeypatch.setattr(builder_class, "url_infos", property(lambda self: infos))
  ds = datasets.load(common.data("tfds", "mnist", directory=str(tmp_path), split="train"))
  np.testing.assert_array_equal(ds.labels, arrays["train-labels-idx1-ubyte.gz"])
  assert "IDX files from TFDS's URLs" in ds.description
  assert os.path.exists(tmp_path / "downloads" / "dfm" / "mnist" / "train-images-idx3-ubyte.gz")


def test_photographs_from_other_packages_load_by_name(tmp_path):
  """scikit-learn's and matplotlib's sample photographs (held out of the earlier studies)
  are colour uint8 and are saved as PNG under their names, pixel for pixel."""
  from PIL import Image

  from dfm_flax.data import photos
  for name, shape in (("china", (427, 640, 3)), ("flower", (427, 640, 3)),
                      ("hopper", (600, 512, 3))):
    p = photos.pixels(name)
    assert p.shape == shape and p.dtype == np.uint8 and p.std() > 10
    path = photos.path(name, str(tmp_path))
    assert path.endswith(f"{name}.png")
    np.testing.assert_array_equal(np.asarray(Image.open(path)), p)
  assert not np.array_equal(photos.pixels("china"), photos.pixels("flower"))
  assert photos.path("no_such_photo.png", str(tmp_path)) == "no_such_photo.png"


def test_pooled_crops_are_block_means_of_their_window():
  rng = np.random.default_rng(3)
  pics = [rng.integers(0, 256, s + (3,)).astype(np.uint8) for s in ((40, 50), (36, 44))]
  raw, labels = datasets.random_crops(pics, 6, 4, seed=7, stride=8)
  pooled, same = datasets.random_crops(pics, 6, 4, seed=7, stride=8, pool=True)
  assert pooled.shape == (6, 4, 4, 3) and pooled.dtype == np.uint8 and (labels == same).all()
  # The same windows (one draw per crop), each found again by its subsampled pixels.
  for crop, sub, label in zip(pooled, raw, labels):
    img = pics[label].astype(np.float64)
    hits = [(y, x) for y in range(img.shape[0] - 31) for x in range(img.shape[1] - 31)
            if np.array_equal(img[y:y + 32:8, x:x + 32:8], sub)]
    y, x = hits[0]
    means = [[img[y + 8 * i:y + 8 * i + 8, x + 8 * j:x + 8 * j + 8].mean(axis=(0, 1))
              for j in range(4)] for i in range(4)]
    np.testing.assert_array_equal(crop, np.round(np.array(means)))
  # Scale 1 pools nothing: the crops are the photographs' own pixels, as before.
  np.testing.assert_array_equal(datasets.random_crops(pics, 6, 4, 7, pool=True)[0],
                                datasets.random_crops(pics, 6, 4, 7)[0])
