"""Photographs that ship with scikit-image (offline), by name, saved as PNG on demand.

The first four are the photographs of the rate-distortion study; the rest make up
the robustness panel (studies/panel.py) and the stability map
(studies/stability.py), colour and grey, several larger than 512 px.
"""
from __future__ import annotations

import os

import numpy as np
from PIL import Image

from dfm_flax import files
from dfm_flax.errors import UserError

_CROPS = {
    "coffee": lambda d: d.coffee()[:, 100:500],  # The built-in 400x400 default image.
    "astronaut": lambda d: d.astronaut(),
    "chelsea": lambda d: d.chelsea(),
    "camera": lambda d: d.camera(),
    "coffee_full": lambda d: d.coffee(),
    "rocket": lambda d: d.rocket(),
    "retina": lambda d: d.retina(),
    "hubble": lambda d: d.hubble_deep_field(),
    "ihc": lambda d: d.immunohistochemistry(),
    "brick": lambda d: d.brick(),
    "grass": lambda d: d.grass(),
    "moon": lambda d: d.moon(),
    "page": lambda d: d.page(),
    "text": lambda d: d.text(),
    "coins": lambda d: d.coins(),
    "cell": lambda d: d.cell(),
    "cat": lambda d: d.cat(),
    "clock": lambda d: d.clock(),
    "gravel": lambda d: d.gravel(),
    "colorwheel": lambda d: d.colorwheel(),
    # Held out of every study that set a default.
    "motorcycle": lambda d: d.stereo_motorcycle()[0][:, 70:670],
}


def _sklearn(index: int):
  from sklearn.datasets import load_sample_images  # each package loads when asked for
  return load_sample_images().images[index]


def _matplotlib(name: str):
  import matplotlib.cbook
  with matplotlib.cbook.get_sample_data(name) as f:
    return np.asarray(Image.open(f).convert("RGB"))


# Ordinary colour photographs from other installed packages (offline), held out of every
# study that set a default: 640x427 and 512x600, the sizes of ordinary photographs.
_OTHERS = {
    "china": lambda: _sklearn(0),    # scikit-learn's sample images
    "flower": lambda: _sklearn(1),
    "hopper": lambda: _matplotlib("grace_hopper.jpg"),  # matplotlib's sample data
}
NAMES = tuple(_CROPS) + tuple(_OTHERS)
# Names that show the same pixels: coffee is coffee_full's centre; scikit-image's cat is
# its chelsea. A photograph held out of training must not be one of these twins.
_SAME_PIXELS = {"coffee": "coffee_full", "cat": "chelsea"}


def check_names(names) -> None:
  """Refuse, in one line, a name that is not a built-in photograph."""
  if unknown := [n for n in names if n not in NAMES]:
    raise UserError(f"unknown photograph(s) {unknown}; built in: {', '.join(NAMES)}")


def shared(names, others) -> list[str]:
  """The names in `names` whose pixels (or a part of them) are also among `others`'."""
  source = lambda n: _SAME_PIXELS.get(n, n)  # noqa: E731
  theirs = {source(n) for n in others}
  return sorted({n for n in names if source(n) in theirs})


def pixels(name: str) -> np.ndarray:
  """The photograph as uint8 (H, W) or (H, W, 3)."""
  if name in _OTHERS:
    return np.asarray(_OTHERS[name](), np.uint8)
  import skimage.data
  return np.asarray(_CROPS[name](skimage.data), np.uint8)


def path(name: str, directory: str) -> str:
  """A built-in name saved as DIR/NAME.png (once); any other string is taken as a path."""
  if name not in NAMES:
    return name
  os.makedirs(directory, exist_ok=True)
  out = os.path.join(directory, f"{name}.png")
  if not os.path.exists(out):
    with files.atomic_path(out) as tmp:
      Image.fromarray(pixels(name)).save(tmp)
  return out
