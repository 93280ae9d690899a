"""Starts learned by meta-learning, and what they suit: one line for a fit that begins from
one where it may end worse than a random start (docs/meta_learning.md#what-a-start-suits)."""
from __future__ import annotations

from dfm_flax.loop.restore import saved_config


def size_note(run: str, shapes, meta_cfg=None) -> str:
  """A line when an image of `shapes` is not of the size `run` learned its start on (its
  crops), else ''. meta_cfg: the run's meta settings, when already read."""
  meta_cfg = saved_config(run).get("meta", {}) if meta_cfg is None else meta_cfg
  crop, scale = meta_cfg.get("crop"), meta_cfg.get("scale", 1)
  other = [s for s in shapes if tuple(s[:2]) != (crop, crop)]
  if not crop or not other:
    return ""
  h, w = other[0][:2]
  windows = f" of {crop * scale}-pixel windows" if scale > 1 else ""
  return (f"note: {run} was learned on {crop}x{crop} crops{windows}; on this {w}x{h} image a "
          f"fit from it can end worse than one from a random start; a start learned at the "
          f"image's scale (meta.scale) or a random start may serve it better")


def lm_note(run: str, meta_cfg=None) -> str:
  """A line for a gradient fit from `run` when `run` learned its start for
  Levenberg-Marquardt steps, else ''."""
  meta_cfg = saved_config(run).get("meta", {}) if meta_cfg is None else meta_cfg
  if meta_cfg.get("inner_optimizer") != "lm":
    return ""
  return (f"note: {run} was learned for Levenberg-Marquardt steps; a gradient fit from it can "
          f"end far below one from a random start; fit small images from it with `codec "
          f"encode --lm_steps`")


def notes(run: str, shapes, gradient_fit: bool = True) -> list[str]:
  """The lines a fit of images of `shapes` from `run` should print (none: all is well)."""
  meta_cfg = saved_config(run).get("meta", {})  # read once for both notes
  found = [size_note(run, shapes, meta_cfg), lm_note(run, meta_cfg) if gradient_fit else ""]
  return [n for n in found if n]
