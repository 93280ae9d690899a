"""Image datasets for the generative experiments, from TFDS or from files on disk.

Every source returns a `Dataset`: float32 images in [0, 1] of shape (N, H, W, C)
and int labels (-1 where a source has none). Sources (config.data.source):

  tfds          tfds.data_source(name, data_dir=dir) read without TensorFlow; when the
                dataset is not prepared and download=True (the default) and the network
                is there, it is fetched first (dfm_flax/data/downloads.py)
  idx           a directory of MNIST-style IDX files (*-images-idx3-ubyte[.gz] and
                matching *-labels-idx1-ubyte[.gz]), e.g. ../shared/data/mnist
  cifar_pickle  a directory of CIFAR-10 python batches (data_batch_1..5, test_batch)
  folder        a directory of images of one size (labels from subdirectory names)
  npz           an .npz with `images` (N, H, W[, C]) and optionally `labels`
  photos        built in, offline: random 32x32 crops of scikit-image's photographs
                (labels = which photograph); for smoke runs of the RGB pipeline
"""
from __future__ import annotations

import dataclasses
import glob
import gzip
import importlib.util
import os
import pickle

import numpy as np

from dfm_flax.data import downloads, photos
from dfm_flax.data.images import load_image, to_uint8
from dfm_flax.errors import UserError

SOURCES = ("tfds", "idx", "cifar_pickle", "folder", "npz", "photos")
# The MNIST digits that ship with the project (the first 1000 of the MNIST test set).
BUNDLED_MNIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "mnist_1k.npz")


@dataclasses.dataclass
class Dataset:
  images: np.ndarray  # (N, H, W, C) float32 in [0, 1]
  labels: np.ndarray  # (N,) int64, -1 when unknown
  description: str

  def __len__(self) -> int:
    return len(self.images)


def _as_float(images: np.ndarray) -> np.ndarray:
  if images.ndim == 3:
    images = images[..., None]
  if images.ndim != 4:
    raise UserError(f"images must have shape (N, H, W[, C]); got {images.shape}")
  if images.dtype == np.uint8:
    return images.astype(np.float32) / 255.0
  images = images.astype(np.float32)
  return images / 255.0 if images.max() > 1.0 else images


# --- IDX (MNIST) -------------------------------------------------------------
def _read_idx(path: str) -> np.ndarray:
  opener = gzip.open if path.endswith(".gz") else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise UserError(f"cannot read IDX file {path}: {e}") from e
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
    raise UserError(f"{path} is not an unsigned-byte IDX file")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  body = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
  if body.size != int(np.prod(shape)):
    raise UserError(f"{path} is truncated: header says {shape}, found {body.size} values")
  return body.reshape(shape)


def load_idx(directory: str) -> Dataset:
  image_files = sorted(glob.glob(os.path.join(directory, "*images-idx3-ubyte*")) +
                       glob.glob(os.path.join(directory, "*images.idx3-ubyte*")))
  if not image_files:
    raise UserError(f"no IDX image files (*-images-idx3-ubyte[.gz]) in {directory}")
  return load_idx_files(image_files)


def load_idx_files(image_files: list[str]) -> Dataset:
  """IDX image files, each with its labels file beside it when there is one."""
  images, labels = [], []
  for path in image_files:
    imgs = _read_idx(path)
    label_path = path.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    labs = _read_idx(label_path) if os.path.exists(label_path) else np.full(len(imgs), -1)
    if len(labs) != len(imgs):
      raise UserError(f"{label_path} has {len(labs)} labels for {len(imgs)} images")
    images.append(imgs)
    labels.append(labs.astype(np.int64))
  names = ", ".join(os.path.basename(p) for p in image_files)
  return Dataset(_as_float(np.concatenate(images)), np.concatenate(labels), f"IDX files {names}")


# --- CIFAR-10 python pickles -------------------------------------------------
def load_cifar_pickle(directory: str, split: str = "train") -> Dataset:
  names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
  wanted = names["train"] + names["test"] if split == "all" else names.get(split)
  if wanted is None:
    raise UserError(f"data.split must be train, test or all for cifar_pickle; got {split!r}")
  paths = [os.path.join(directory, n) for n in wanted if os.path.exists(os.path.join(directory, n))]
  if not paths:
    raise UserError(f"no CIFAR-10 pickle batches ({', '.join(wanted)}) in {directory}")
  images, labels = [], []
  for path in paths:
    try:
      with open(path, "rb") as f:
        batch = pickle.load(f, encoding="bytes")
      data = np.asarray(batch[b"data"], np.uint8)
      labs = np.asarray(batch[b"labels"], np.int64)
    except (pickle.UnpicklingError, EOFError, OSError, KeyError, IndexError, TypeError,
            ValueError, AttributeError) as e:  # What damage in a pickle surfaces as.
      raise UserError(f"cannot read CIFAR batch {path}: {type(e).__name__}: {e}") from e
    images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    labels.append(labs)
  return Dataset(_as_float(np.concatenate(images)), np.concatenate(labels),
                 f"CIFAR-10 pickles {', '.join(os.path.basename(p) for p in paths)}")


# --- a folder of images -------------------------------------------------------
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def folder_images(directory: str) -> tuple[list[np.ndarray], np.ndarray]:
  """Every image under directory (sorted paths, any sizes), float32 (H, W, C) in [0, 1],
  and its label: the index of its subdirectory (-1 when all sit in directory itself)."""
  paths = sorted(p for p in glob.glob(os.path.join(directory, "**", "*"), recursive=True)
                 if p.lower().endswith(IMAGE_EXTENSIONS))
  if not paths:
    raise UserError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {directory}")
  subdirs = [os.path.relpath(os.path.dirname(p), directory) for p in paths]
  classes = sorted(set(subdirs))
  labels = np.array([classes.index(d) if classes != ["."] else -1 for d in subdirs], np.int64)
  return [load_image(p) for p in paths], labels


def load_folder(directory: str) -> Dataset:
  arrays, labels = folder_images(directory)
  shapes = {a.shape for a in arrays}
  if len(shapes) > 1:
    sizes = sorted({f"{s[1]}x{s[0]}x{s[2]}" for s in shapes})
    raise UserError(f"images in {directory} have mixed sizes ({', '.join(sizes[:5])}); "
                    f"resize them to one size first")
  return Dataset(np.stack(arrays), labels, f"{len(arrays)} images from {directory}")


def image_list(data_cfg) -> tuple[list[np.ndarray], str]:
  """The images of config.data as a list (a folder's may differ in size), after data.classes
  and data.limit, and a description."""
  if data_cfg.source == "folder" and data_cfg.get("dir") and os.path.isdir(data_cfg.dir):
    arrays, labels = folder_images(data_cfg.dir)
    pics = np.empty(len(arrays), object)  # One entry per image: sizes may differ.
    for i, a in enumerate(arrays):
      pics[i] = a
    ds = _filter(Dataset(pics, labels, f"{len(arrays)} images from {data_cfg.dir}"),
                 data_cfg.get("classes", ""), data_cfg.get("limit", 0))
  else:
    ds = load(data_cfg)
  return list(ds.images), ds.description


# --- npz ------------------------------------------------------------------------
def load_npz(path: str) -> Dataset:
  try:
    with np.load(path) as f:
      if "images" not in f:
        raise UserError(f"{path} has no 'images' array (found: {', '.join(f.files)})")
      images = f["images"]
      labels = f["labels"].astype(np.int64) if "labels" in f else np.full(len(images), -1)
  except (OSError, ValueError) as e:
    raise UserError(f"cannot read {path}: {e}") from e
  return Dataset(_as_float(images), labels, f"npz {path}")


# --- built-in photo crops --------------------------------------------------------
PHOTO_CROP_SOURCES = ("astronaut", "coffee_full", "chelsea", "rocket")


def load_photos(count: int, size: int, seed: int) -> Dataset:
  crops, labels = photo_crops(PHOTO_CROP_SOURCES, count, size, seed, stride=4)  # 4x subsampled: more structure.
  return Dataset(_as_float(crops), labels, f"{count} built-in {size}x{size} photo crops")


def photo_crops(names, count: int, size: int, seed: int, stride: int = 1, pool: bool = False):
  """count size x size crops of scikit-image photographs (dfm_flax/data/photos.py), uint8 RGB
  (grey repeated), of a random window (random_crops): crop i comes from photograph
  i mod len(names), which is its label. Deterministic in seed."""
  photos.check_names(names)
  pics = []
  for name in names:
    p = photos.pixels(name)
    pics.append(np.repeat(p[..., None], 3, -1) if p.ndim == 2 else p[..., :3])
  return random_crops(pics, count, size, seed, stride, names=names, pool=pool)


def random_crops(pics, count: int, size: int, seed: int, stride: int = 1, names=None,
                 pool: bool = False):
  """count size x size crops of the (H, W, C) arrays `pics` (any dtype, kept) from random
  windows of size * stride pixels: every `stride`-th pixel of the window, or with `pool`
  the mean of each stride x stride block (the window downscaled, without aliasing; integer
  pixels rounded). Crop i comes from picture i mod len(pics), its label. Deterministic in
  seed."""
  span = size * stride
  for i, p in enumerate(pics):
    if min(p.shape[:2]) < span:
      what = f"photograph {names[i]}" if names else f"image {i}"
      raise UserError(f"{what} ({p.shape[0]}x{p.shape[1]}) is smaller than a {span}-pixel crop")
  if len({p.shape[2] for p in pics}) > 1:
    raise UserError("the images mix grey and colour; give them one channel count")
  rng = np.random.default_rng(seed)
  crops = np.empty((count, size, size, pics[0].shape[2]), pics[0].dtype)
  labels = np.arange(count) % len(pics)
  for i, label in enumerate(labels):
    img = pics[label]
    y, x = rng.integers(0, img.shape[0] - span + 1), rng.integers(0, img.shape[1] - span + 1)
    if pool:
      block = img[y:y + span, x:x + span].reshape(size, stride, size, stride, -1).mean((1, 3))
      crops[i] = np.round(block) if np.issubdtype(crops.dtype, np.integer) else block
    else:
      crops[i] = img[y:y + span:stride, x:x + span:stride]
  return crops, labels.astype(np.int64)


# --- TFDS ---------------------------------------------------------------------
def load_tfds(name: str, split: str, data_dir: str | None, download: bool) -> Dataset:
  """A TFDS dataset, prepared first when it is not and `download` allows (dfm_flax/data/downloads.py)."""
  import tensorflow_datasets as tfds  # heavy: only for data.source=tfds
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise UserError(f"TFDS has no dataset {name!r}") from e
  if not builder.is_prepared():
    fallback = _not_prepared(builder, name, split, data_dir, download)
    if fallback is not None:
      return fallback
  source = tfds.data_source(name, split=split, data_dir=data_dir or None, download=False)
  records = [source[i] for i in range(len(source))]
  images = np.stack([r["image"] for r in records])
  labels = np.array([r.get("label", -1) for r in records], np.int64)
  return Dataset(_as_float(images), labels, f"TFDS {name} {split}")


def _not_prepared(builder, name, split, data_dir, download) -> Dataset | None:
  """Prepare the dataset (None: TFDS has it now) or read its raw files; refuse in one line
  when that cannot be done here."""
  where = data_dir or os.path.join("~", "tensorflow_datasets")
  other = ("or use --config.data.source=idx|cifar_pickle|folder|npz with --config.data.dir=PATH")
  if not download:
    raise UserError(f"TFDS dataset {name!r} is not prepared in {where} and data.download is "
                    f"False; set --config.data.download=True where the network is, {other}")
  url_sums = {url: info.checksum for url, info in (builder.url_infos or {}).items()}
  host = downloads.unreachable_host(url_sums)
  if host:
    raise UserError(f"TFDS dataset {name!r} is not prepared in {where} and {host} cannot be "
                    f"reached (offline?); prepare it where the network is, {other}")
  has_tensorflow = importlib.util.find_spec("tensorflow") is not None
  if name in downloads.IDX_DATASETS and not has_tensorflow:
    cache = os.path.join(os.path.expanduser(where), "downloads", "dfm", name)
    ds = load_idx_files(downloads.idx_files(url_sums, split, cache))
    return dataclasses.replace(ds, description=f"{name} {split} (IDX files from TFDS's URLs)")
  if not has_tensorflow:
    raise UserError(f"preparing TFDS dataset {name!r} needs TensorFlow (pip install "
                    f"tensorflow-cpu) once; reading it afterwards does not, {other}")
  try:
    builder.download_and_prepare()
  except OSError as e:  # The network went away, or the disk filled.
    raise UserError(f"preparing TFDS dataset {name!r} in {where} failed: {e}") from e
  return None


def load(data_cfg) -> Dataset:
  """The dataset described by config.data, class-filtered and truncated as asked."""
  src = data_cfg.source
  directory = data_cfg.get("dir", "")
  if src not in ("tfds", "photos") and not directory:
    raise UserError(f"data.source={src} needs --config.data.dir=PATH")
  if src not in ("tfds", "photos") and not os.path.exists(directory):
    raise UserError(f"data.dir does not exist: {directory}")
  if src == "photos":
    ds = load_photos(data_cfg.get("limit", 0) or 256, 32, data_cfg.get("seed", 0))
  elif src == "tfds":
    ds = load_tfds(data_cfg.name, data_cfg.split, directory, data_cfg.get("download", True))
  elif src == "idx":
    ds = load_idx(directory)
  elif src == "cifar_pickle":
    ds = load_cifar_pickle(directory, data_cfg.split)
  elif src == "folder":
    ds = load_folder(directory)
  elif src == "npz":
    ds = load_npz(directory)
  else:
    raise UserError(f"unknown data.source {src!r}; use one of {', '.join(SOURCES)}")
  return _filter(ds, data_cfg.get("classes", ""), data_cfg.get("limit", 0))


# The held-out images are the same for every task and run seed at one test_fraction: the
# FID classifier is then tested on exactly the digits the generators are scored against.
SPLIT_SEED = 0


def split(ds: Dataset, test_fraction: float) -> tuple[Dataset, Dataset]:
  """(train part, held-out part): the last `test_fraction` of a fixed permutation held out."""
  order = np.random.default_rng(SPLIT_SEED).permutation(len(ds))
  n_test = int(round(len(ds) * test_fraction))
  if n_test < 1 or n_test >= len(ds):
    raise UserError(f"data.test_fraction={test_fraction} leaves no train or no test images "
                    f"of {len(ds)}")
  train, test = order[:-n_test], order[-n_test:]
  return (Dataset(ds.images[train], ds.labels[train], ds.description + " (train part)"),
          Dataset(ds.images[test], ds.labels[test], ds.description + " (held-out part)"))


def load_split(data_cfg) -> tuple[Dataset, Dataset | None]:
  """(training images, held-out images or None when data.test_fraction is 0 or absent)."""
  ds = load(data_cfg)
  fraction = data_cfg.get("test_fraction", 0.0)
  return split(ds, fraction) if fraction else (ds, None)


def parse_classes(classes) -> list[int]:
  """'' or -1: all; 2 or '2' or '2,7' or (2, 7): those labels."""
  if classes in ("", None, -1):
    return []
  if isinstance(classes, int):
    return [classes]
  if isinstance(classes, str):
    return [int(c) for c in classes.replace(" ", "").split(",") if c]
  return [int(c) for c in classes]


def _filter(ds: Dataset, classes, limit: int) -> Dataset:
  wanted = parse_classes(classes)
  if wanted:
    keep = np.isin(ds.labels, wanted)
    if not keep.any():
      present = sorted(set(ds.labels.tolist()))
      raise UserError(f"data.classes={wanted} leaves no images in {ds.description} "
                      f"(labels present: {present[:20]})")
    ds = Dataset(ds.images[keep], ds.labels[keep], f"{ds.description}, classes {wanted}")
  if limit and limit < len(ds):
    ds = Dataset(ds.images[:limit], ds.labels[:limit], f"{ds.description}, first {limit}")
  return ds


# --- batches ------------------------------------------------------------------
class ImageBatches:
  """Epoch-wise shuffled batches of dataset images, a pure function of (seed, step).

  `rows=(start, stop)` gathers only those rows of the batch (one process's share in a
  multi-process run): the batch's composition never depends on the process count, and
  within an epoch no image is drawn twice, by any process.
  """

  def __init__(self, ds: Dataset, batch_size: int, seed: int):
    if batch_size > len(ds):
      raise UserError(f"train.batch_size={batch_size} is larger than the {len(ds)} images "
                      f"of {ds.description}; lower it")
    import jax
    import jax.numpy as jnp
    self.images = jnp.asarray(to_uint8(ds.images))  # uint8 on device: 4x less memory.
    self.batch_size = batch_size
    self.steps_per_epoch = len(ds) // batch_size
    self.key = jax.random.key(seed + 2)
    self._permute = jax.jit(lambda key, epoch: jax.random.permutation(
        jax.random.fold_in(key, epoch), len(ds)))
    # The images are an argument, not a closure: a jitted closure would bake the whole
    # dataset into the compiled program as a constant.
    self._gather = jax.jit(self._slice, static_argnums=(3,))
    self._epoch, self._order = None, None

  def _slice(self, images_u8, order, pos, rows):
    import jax
    import jax.numpy as jnp
    index = jax.lax.dynamic_slice_in_dim(order, pos * self.batch_size, self.batch_size)
    index = index[rows[0]:rows[1]]
    return {"index": index, "image": images_u8[index].astype(jnp.float32) / 255.0}

  def __call__(self, step: int, rows: tuple[int, int] | None = None):
    epoch, pos = divmod(int(step), self.steps_per_epoch)
    if epoch != self._epoch:  # One permutation per epoch, not one per step.
      self._epoch, self._order = epoch, self._permute(self.key, epoch)
    return self._gather(self.images, self._order, pos, rows or (0, self.batch_size))
