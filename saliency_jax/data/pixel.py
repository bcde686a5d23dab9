"""The single planted pixel (docs/evaluation.md, "The single-pixel dataset"), vectorised and
reproducible from a key.

Both variants are one mechanism: a `PixelSpec` holds a location and a colour per class.
  colour variant:   one location for all classes, the class colour code (r_k, 10, 245);
  location variant: one fixed colour for all classes, a distinct location per class.
An image's "pixel class" picks its row of the spec: the true label (`pixel`), another
randomly drawn class (`conflict`), or none (`nopix`, the untouched image). Jitter moves the
location by a rounded Gaussian offset (clipped to the image) and adds rounded Gaussian noise
to the colour (clipped to 0..255), drawn per image. Everything happens on uint8, before any
conversion to float.
"""

from __future__ import annotations

from typing import NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax.checks import require_choice, require_non_negative

CONDITIONS = ("pixel", "nopix", "conflict")
VARIANTS = ("colour", "location")


def colour_code(num_classes: int = 10) -> np.ndarray:
  """(K, 3) int: class k gets RGB (round(10 + k * 235 / (K - 1)), 10, 245)."""
  red = np.round(10 + np.arange(num_classes) * (245 - 10) / max(num_classes - 1, 1)).astype(np.int32)
  return np.stack([red, np.full_like(red, 10), np.full_like(red, 245)], axis=1)


@flax.struct.dataclass
class PixelSpec:
  locations_K2: jax.Array  # int32 (row, col) per class
  colours_K3: jax.Array  # int32 RGB per class

  @property
  def num_classes(self) -> int:
    return self.locations_K2.shape[0]


class PixelSet(NamedTuple):
  """A batch of images under one condition. `pixel_class_B` is -1 where no pixel was planted;
  `location_B2` is where the pixel was planted (for `nopix`, where the true class's pixel
  would have been)."""

  images_BHWC: jax.Array  # uint8
  labels_B: jax.Array  # int32
  pixel_class_B: jax.Array  # int32
  location_B2: jax.Array  # int32


def _pair(field: str, value, hw: tuple[int, int]) -> tuple[int, int]:
  if len(value) != 2 or not all(isinstance(v, (int, np.integer)) for v in value):
    raise ValueError(f"{field}={tuple(value)!r} is not allowed; give (row, col) as two integers")
  row, col = int(value[0]), int(value[1])
  if not (0 <= row < hw[0] and 0 <= col < hw[1]):
    raise ValueError(f"{field}={(row, col)!r} is outside the {hw[0]}x{hw[1]} image; rows 0..{hw[0] - 1}, "
                      f"cols 0..{hw[1] - 1}")
  return row, col


def make_spec(pixel_config, key: jax.Array, num_classes: int, image_hw: tuple[int, int] = (32, 32)) -> PixelSpec:
  """The spec from a config's `pixel` section. Locations not given are drawn from `key`."""
  require_choice("pixel.variant", pixel_config.variant, VARIANTS)
  h, w = image_hw
  if pixel_config.variant == "colour":
    if pixel_config.location:
      location = _pair("pixel.location", pixel_config.location, image_hw)
    else:
      flat = int(jax.random.randint(key, (), 0, h * w))
      location = (flat // w, flat % w)
    locations = np.tile(np.asarray(location, np.int32), (num_classes, 1))
    colours = colour_code(num_classes)
  else:
    if pixel_config.class_locations:
      if len(pixel_config.class_locations) != num_classes:
        raise ValueError(f"pixel.class_locations has {len(pixel_config.class_locations)} entries; "
                          f"give one (row, col) per class ({num_classes})")
      locations = np.asarray([_pair(f"pixel.class_locations[{k}]", loc, image_hw)
                              for k, loc in enumerate(pixel_config.class_locations)], np.int32)
      if len({tuple(l) for l in locations.tolist()}) != num_classes:
        raise ValueError("pixel.class_locations repeats a location; every class needs its own")
    else:
      flat = np.asarray(jax.random.choice(key, h * w, (num_classes,), replace=False))
      locations = np.stack([flat // w, flat % w], axis=1).astype(np.int32)
    colour = np.asarray(pixel_config.fixed_colour, np.int32)
    if colour.shape != (3,) or colour.min() < 0 or colour.max() > 255:
      raise ValueError(f"pixel.fixed_colour={tuple(pixel_config.fixed_colour)!r} is not allowed; "
                        "give (R, G, B) in 0..255")
    colours = np.tile(colour, (num_classes, 1))
  return PixelSpec(jnp.asarray(locations), jnp.asarray(colours))


def plant(images_BHWC: jax.Array, pixel_class_B: jax.Array, spec: PixelSpec, key: jax.Array,
          position_sd: float = 0.0, colour_sd: float = 0.0) -> tuple[jax.Array, jax.Array]:
  """Write the pixel of class `pixel_class_B[i]` into image i; returns (images, location_B2).

  Images whose pixel class is negative are left untouched.
  """
  b, h, w, _ = images_BHWC.shape
  pos_key, col_key = jax.random.split(key)
  cls = jnp.maximum(pixel_class_B, 0)
  location = spec.locations_K2[cls]
  if position_sd > 0:
    offset = jnp.round(position_sd * jax.random.normal(pos_key, (b, 2)))
    location = location + offset.astype(jnp.int32)
  location = jnp.clip(location, 0, jnp.array([h - 1, w - 1]))
  colour = spec.colours_K3[cls].astype(jnp.float32)
  if colour_sd > 0:
    colour = jnp.round(colour + colour_sd * jax.random.normal(col_key, (b, 3)))
  colour = jnp.clip(colour, 0, 255).astype(jnp.uint8)
  rows, cols = location[:, 0], location[:, 1]
  batch = jnp.arange(b)
  planted = jnp.where((pixel_class_B >= 0)[:, None], colour, images_BHWC[batch, rows, cols])
  return images_BHWC.at[batch, rows, cols].set(planted), location


def apply_condition(images_BHWC: jax.Array, labels_B: jax.Array, condition: str, spec: PixelSpec,
                    key: jax.Array, position_sd: float = 0.0, colour_sd: float = 0.0) -> PixelSet:
  """The images under `condition` ('pixel', 'nopix' or 'conflict'), jitter drawn from `key`."""
  require_choice("condition", condition, CONDITIONS)
  require_non_negative("pixel.position_sd", position_sd)
  require_non_negative("pixel.colour_sd", colour_sd)
  labels_B = jnp.asarray(labels_B, jnp.int32)
  class_key, jitter_key = jax.random.split(key)
  if condition == "pixel":
    pixel_class = labels_B
  elif condition == "conflict":
    # Uniform over the other K-1 classes.
    shift = jax.random.randint(class_key, labels_B.shape, 1, spec.num_classes)
    pixel_class = (labels_B + shift) % spec.num_classes
  else:
    pixel_class = jnp.full_like(labels_B, -1)
  images, location = _plant_jit(jnp.asarray(images_BHWC), pixel_class, spec, jitter_key,
                                float(position_sd), float(colour_sd))
  if condition == "nopix":
    location = spec.locations_K2[labels_B]
  return PixelSet(images, labels_B, pixel_class, location)


_plant_jit = jax.jit(plant, static_argnames=("position_sd", "colour_sd"))


def condition_key(data_key: jax.Array, split: str, condition: str) -> jax.Array:
  """The key of one (split, condition) set: fixed by the data seed alone, so every run,
  resumed or not, and every model trained on the same data seed sees the same images."""
  return jax.random.fold_in(jax.random.fold_in(data_key, ("train", "test").index(split) + 1),
                            CONDITIONS.index(condition))
