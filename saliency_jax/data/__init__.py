"""Data: image sources, the planted pixel, normalisation; `prepare(config)` ties them together.

Images stay uint8 until the model's input: `Normalization` turns them into floats inside the
jitted step, so a whole dataset lives on the device at a quarter of its float32 size.
"""

from __future__ import annotations

import dataclasses

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.config_checks import require_choice
from saliency_jax.data import pixel, sources
from saliency_jax.data.pixel import CONDITIONS, VARIANTS, PixelSet, PixelSpec, apply_condition, colour_code, make_spec
from saliency_jax.data.sources import SOURCES, Source, Split

NORMALIZATIONS = ("dataset", "imagenet")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@flax.struct.dataclass
class Normalization:
  """x = (uint8 / 255 - mean) / std per channel."""

  mean_C: jax.Array
  std_C: jax.Array

  def __call__(self, images_u8):
    return (jnp.asarray(images_u8, jnp.float32) / 255.0 - self.mean_C) / self.std_C

  def black(self, shape=(1, 32, 32, 3)):
    """The normalised image of all-zero pixels."""
    return self(jnp.zeros(shape, jnp.uint8))

  def white(self, shape=(1, 32, 32, 3)):
    """The normalised image of all-255 pixels."""
    return self(jnp.full(shape, 255, jnp.uint8))


def channel_stats(images_u8: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
  """Per-channel mean and std of images scaled to [0, 1], in float64, chunked to bound memory."""
  total = np.zeros(3)
  total_sq = np.zeros(3)
  for start in range(0, len(images_u8), chunk):
    block = images_u8[start:start + chunk].reshape(-1, 3).astype(np.float64) / 255.0
    total += block.sum(0)
    total_sq += np.square(block).sum(0)
  n = images_u8.size // 3
  mean = total / n
  return mean, np.sqrt(np.maximum(total_sq / n - mean**2, 0.0))


def make_normalization(name: str, train_images_u8: np.ndarray) -> Normalization:
  """'dataset': statistics of the training images (before the pixel is planted, as the
  pixel changes 1 of 1024 values); 'imagenet': the constants the original code used."""
  require_choice("data.normalization", name, NORMALIZATIONS)
  if name == "imagenet":
    mean, std = np.asarray(IMAGENET_MEAN), np.asarray(IMAGENET_STD)
  else:
    mean, std = channel_stats(train_images_u8)
  return Normalization(jnp.asarray(mean, jnp.float32), jnp.asarray(std, jnp.float32))


@dataclasses.dataclass(frozen=True)
class Prepared:
  """Everything a run trains and tests on: uint8 images with the pixel, and how to normalise."""

  source: Source
  spec: PixelSpec
  normalization: Normalization
  train: PixelSet  # the `pixel` condition under the training jitter
  tests: dict[str, PixelSet]  # condition -> test set, same jitter
  seed: int = 0  # the data seed every draw comes from

  @property
  def num_classes(self) -> int:
    return self.source.num_classes

  def test_set(self, condition: str = "pixel", position_sd: float = 0.0, colour_sd: float = 0.0) -> PixelSet:
    """The test split under `condition` and a jitter: the one place test sets are made. Draws
    depend on the data seed and the condition alone, so an image gets the same draw in training's
    evaluation, the single-pixel grid and the sanity studies."""
    key = pixel.condition_key(jax.random.key(self.seed), "test", condition)
    return apply_condition(self.source.test.images, self.source.test.labels, condition, self.spec, key,
                           position_sd=position_sd, colour_sd=colour_sd)


def permuted_labels(labels_B, key: jax.Array) -> jax.Array:
  """The labels shuffled over the images by a permutation drawn from `key`: every class keeps its
  count, and the same data seed gives the same permutation."""
  labels_B = jnp.asarray(labels_B)
  return labels_B[jax.random.permutation(key, len(labels_B))]


def balanced_indices(labels_N, n: int, seed: int) -> np.ndarray:
  """`n` indices into `labels_N`, class-balanced and seeded: each class's images are shuffled by
  `seed`, then taken round-robin over the classes (class 0's first, class 1's first, ...), so any
  prefix is balanced too and a class with too few images gives way to the others. n <= 0 or
  n >= N: every index, in order (the whole split, nothing left out)."""
  labels_N = np.asarray(labels_N)
  if n <= 0 or n >= len(labels_N):
    return np.arange(len(labels_N))
  rng = np.random.default_rng([seed, 7])
  per_class = [rng.permutation(np.flatnonzero(labels_N == k)) for k in np.unique(labels_N)]
  depth = max(len(p) for p in per_class)
  # Rank r of every class before rank r + 1 of any: a (depth, classes) grid read row by row.
  grid = np.full((depth, len(per_class)), -1)
  for k, p in enumerate(per_class):
    grid[:len(p), k] = p
  order = grid.ravel()
  return order[order >= 0][:n]


def prepare(config, conditions=CONDITIONS) -> Prepared:
  """Load `config.data.source` and plant the pixel as `config.pixel` says.

  Every random choice comes from `config.data.seed`: the location, the jitter and the
  conflict classes of each split and condition (see `pixel.condition_key`), and with
  `data.permute_train_labels` the permutation of the training labels.
  """
  source = sources.load(config.data)
  data_key = jax.random.key(config.data.seed)
  image_hw = source.train.images.shape[1:3]
  spec = make_spec(config.pixel, jax.random.fold_in(data_key, 0), source.num_classes, image_hw)
  jitter = dict(position_sd=config.pixel.position_sd, colour_sd=config.pixel.colour_sd)
  train = apply_condition(source.train.images, source.train.labels, "pixel", spec,
                          pixel.condition_key(data_key, "train", "pixel"), **jitter)
  if config.data.get("permute_train_labels", False):
    # Data randomisation (docs/evaluation.md, "The single-pixel dataset"): the images keep their true class's pixel, so it says
    # nothing about the label a model must now fit; test labels stay true.
    train = train._replace(labels_B=permuted_labels(train.labels_B, jax.random.fold_in(data_key, 3)))
  prepared = Prepared(source, spec, make_normalization(config.data.normalization, source.train.images), train, {},
                      config.data.seed)
  return dataclasses.replace(prepared, tests={c: prepared.test_set(c, **jitter) for c in conditions})


__all__ = [
    "CONDITIONS", "VARIANTS", "SOURCES", "NORMALIZATIONS", "Normalization", "PixelSet", "PixelSpec", "Prepared",
    "Source", "Split", "apply_condition", "balanced_indices", "channel_stats", "colour_code", "make_normalization", "make_spec",
    "permuted_labels", "prepare", "pixel", "sources",
]
