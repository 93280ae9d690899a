"""Feature extractors for Frechet distances, chosen by config.eval.

  classifier:  the penultimate layer of the project's own classifier
               (eval.classifier_dir = a finished `classify` run); works offline.
  inception:   Inception-v3 pool3 (2048-d) with the standard FID weights file
               (eval.inception_weights = path); see dfm_flax/evaluation/inception.py.
"""
from __future__ import annotations

import numpy as np

from dfm_flax.errors import UserError
from dfm_flax.evaluation import inception
from dfm_flax.evaluation.batched import compiled, in_batches
from dfm_flax.loop.restore import load_model


def classifier_features(workdir: str):
  _, meta, model = load_model(workdir, expect_task="classify")
  fn = compiled(model, "features")  # One compilation for the reference and every prior.
  want = tuple(meta["image_shape"])

  def extract(images: np.ndarray) -> np.ndarray:
    if tuple(images.shape[1:]) != want:
      raise UserError(f"the classifier in {workdir} takes {want} images, not {images.shape[1:]}")
    return in_batches(fn, images.astype(np.float32), 500)
  return extract


def available(eval_cfg) -> dict:
  out = {}
  if eval_cfg.get("classifier_dir", ""):
    out["classifier"] = classifier_features(eval_cfg.classifier_dir)
  if eval_cfg.get("inception_weights", ""):
    out["inception"] = inception.fid_features(eval_cfg.inception_weights)
  return out
