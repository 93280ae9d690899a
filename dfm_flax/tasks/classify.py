"""A small CNN classifier trained by the shared loop; its penultimate layer gives the
features of the offline classifier-FID (dfm_flax/evaluation/features.py).

The dataset is split by `datasets.split`: the last `data.test_fraction` of a fixed
permutation is held out and only scored in `evaluate`; generators given the same
fraction are scored against those same images.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from dfm_flax.data import datasets
from dfm_flax.errors import UserError
from dfm_flax.evaluation.batched import compiled, in_batches
from dfm_flax.tasks import TaskBase


class CNN(nnx.Module):
  def __init__(self, channels: int, height: int, width: int, num_classes: int, features: int,
               rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(channels, 32, (3, 3), rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, (3, 3), rngs=rngs)
    flat = 64 * (height // 4) * (width // 4)
    self.dense = nnx.Linear(flat, features, rngs=rngs)
    self.head = nnx.Linear(features, num_classes, rngs=rngs)

  def features(self, x: jax.Array) -> jax.Array:
    """Penultimate activations for images (B, H, W, C) in [0, 1]."""
    x = nnx.avg_pool(nnx.relu(self.conv1(x * 2 - 1)), (2, 2), strides=(2, 2))
    x = nnx.avg_pool(nnx.relu(self.conv2(x)), (2, 2), strides=(2, 2))
    return nnx.relu(self.dense(x.reshape(x.shape[0], -1)))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.head(self.features(x))


def model_from_info(config, info: dict, rngs: nnx.Rngs) -> CNN:
  h, w, c = info["image_shape"]
  return CNN(c, h, w, info["num_classes"], config.model.features, rngs)


class Task(TaskBase):
  def __init__(self, config):
    self.config = config
    full = datasets.load(config.data)
    if (full.labels < 0).any():
      raise UserError(f"{full.description} has unlabeled images; a classifier needs labels")
    self.train, self.test = datasets.split(full, config.data.test_fraction)
    self.num_classes = int(full.labels.max()) + 1
    self.labels = jnp.asarray(self.train.labels)
    self.batches = datasets.ImageBatches(self.train, config.train.batch_size, config.seed)

  def checkpoint_info(self) -> dict:
    return {"image_shape": list(self.train.images.shape[1:]), "num_classes": self.num_classes}

  def build_model(self, rngs: nnx.Rngs) -> CNN:
    return model_from_info(self.config, self.checkpoint_info(), rngs)


  def batch(self, step: int, rows=None):
    b = self.batches(step, rows)
    return {"image": b["image"], "label": self.labels[b["index"]]}

  @staticmethod
  def loss(model, batch):
    logits = model(batch["image"])
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, {"accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}

  def evaluate(self, model, workdir: str) -> dict:
    logits = compiled(model, "__call__")

    def accuracy(ds):
      pred = np.argmax(in_batches(logits, ds.images, 1000), -1)
      return float(np.mean(pred == ds.labels))
    return {"test_accuracy": accuracy(self.test), "train_accuracy": accuracy(self.train),
            "num_train": len(self.train), "num_test": len(self.test),
            "data": self.test.description}
