"""Image sources. Each yields uint8 images (N, 32, 32, 3) and int32 labels for train and test.

`cifar10`   tensorflow-datasets' cifar10 (needs TensorFlow and, the first time, the network).
`folder`    a class-per-subfolder tree with train/ and test/ splits, decoded with PIL and
            cached once as a compressed .npz, so the second run starts in seconds.
`synthetic` generated from a seed: smooth backgrounds with a weak class signal, so a model
            learns a little without the pixel. No download; for the quickstart and the tests.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import importlib
import os
import pathlib
import time
import zipfile
from typing import Sequence

import numpy as np
from absl import logging

from saliency_jax.files import atomic_open
from saliency_jax.progress import Progress

SOURCES = ("cifar10", "folder", "synthetic")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")


@dataclasses.dataclass(frozen=True)
class Split:
  images: np.ndarray  # uint8 (N, H, W, 3)
  labels: np.ndarray  # int32 (N,)


@dataclasses.dataclass(frozen=True)
class Source:
  train: Split
  test: Split
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def take_per_class(split: Split, per_class: int) -> Split:
  """The first `per_class` examples of each class, in their original order (0 keeps all)."""
  if not per_class:
    return split
  keep = np.zeros(len(split.labels), bool)
  for k in np.unique(split.labels):
    keep[np.flatnonzero(split.labels == k)[:per_class]] = True
  return Split(split.images[keep], split.labels[keep])


def load(data_config) -> Source:
  """The source named by `data_config.source`, limited to `data_config.max_per_class`."""
  if data_config.source == "synthetic":
    return synthetic(data_config.seed, data_config.synthetic_train_per_class, data_config.synthetic_test_per_class)
  if data_config.source == "folder":
    return folder(data_config.path, cache_dir=data_config.cache_dir, per_class=data_config.max_per_class)
  if data_config.source == "cifar10":
    return cifar10(data_dir=data_config.tfds_data_dir or None, per_class=data_config.max_per_class)
  raise ValueError(f"data.source={data_config.source!r} is not allowed; choose one of: "
                    + ", ".join(repr(s) for s in SOURCES))


# --- synthetic ---------------------------------------------------------------------------------


def _smooth_noise(rng: np.random.Generator, n: int, grid: int, size: int = 32) -> np.ndarray:
  """Gaussian noise on a coarse grid, bilinearly upsampled: blob-like 'backgrounds'."""
  coarse = rng.standard_normal((n, grid, grid, 3)).astype(np.float32)
  pos = np.linspace(0, grid - 1, size, dtype=np.float32)
  i0 = np.floor(pos).astype(int)
  i1 = np.minimum(i0 + 1, grid - 1)
  t = (pos - i0)[None, :, None, None]
  rows = coarse[:, i0] * (1 - t) + coarse[:, i1] * t
  t = (pos - i0)[None, None, :, None]
  return rows[:, :, i0] * (1 - t) + rows[:, :, i1] * t


def synthetic(seed: int, train_per_class: int, test_per_class: int, num_classes: int = 10) -> Source:
  """Deterministic images: a random smooth background plus a faint class-specific pattern.

  The class pattern is faint next to the background (amplitude 10 against 48 and 12), so without
  the planted pixel a small model does better than chance (about 25% for 10 classes) and no more.
  """
  rng = np.random.default_rng([seed, 20240521])
  templates = _smooth_noise(rng, num_classes, grid=4)

  def split(per_class: int) -> Split:
    labels = np.repeat(np.arange(num_classes, dtype=np.int32), per_class)
    rng.shuffle(labels)
    background = _smooth_noise(rng, len(labels), grid=6)
    fine = rng.standard_normal(background.shape).astype(np.float32)
    images = 128 + 48 * background + 10 * templates[labels] + 12 * fine
    return Split(np.clip(np.rint(images), 0, 255).astype(np.uint8), labels)

  train = split(train_per_class)
  return Source(train, split(test_per_class), tuple(f"class{k}" for k in range(num_classes)))


# --- folder ------------------------------------------------------------------------------------


def default_cache_dir() -> pathlib.Path:
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return pathlib.Path(root) / "saliency_jax"


def _list_split(root: pathlib.Path, split: str, per_class: int, class_names: Sequence[str] | None):
  split_dir = root / split
  if not split_dir.is_dir():
    raise ValueError(f"data.path={str(root)!r} has no '{split}/' folder; the folder source needs "
                      "DIR/train/<class>/*.jpg and DIR/test/<class>/*.jpg")
  names = tuple(sorted(d.name for d in split_dir.iterdir() if d.is_dir()))
  if not names:
    raise ValueError(f"data.path={str(root)!r}: '{split}/' has no class subfolders")
  if class_names is not None and names != tuple(class_names):
    raise ValueError(f"data.path={str(root)!r}: the class folders of '{split}/' {names} differ from "
                      f"those of 'train/' {tuple(class_names)}")
  files, labels = [], []
  for label, name in enumerate(names):
    found = sorted(p for p in (split_dir / name).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
      raise ValueError(f"data.path={str(root)!r}: '{split}/{name}/' has no images; every class needs images in "
                        "train/ and test/ (or remove the folder)")
    if per_class:
      found = found[:per_class]
    files += found
    labels += [label] * len(found)
  return names, files, np.asarray(labels, np.int32)


def _decode(path: pathlib.Path) -> np.ndarray:
  from PIL import Image  # pylint: disable=g-import-not-at-top

  try:
    with Image.open(path) as image:
      return np.asarray(image.convert("RGB"), np.uint8)
  except (OSError, ValueError, SyntaxError) as e:  # PIL's UnidentifiedImageError is an OSError
    raise ValueError(f"data.path: {path} is not a readable image ({type(e).__name__}: {e}); remove or "
                      "replace it") from None


def _decode_all(files: Sequence[pathlib.Path], split: str = "") -> np.ndarray:
  # PIL releases the GIL while decoding, so threads use every core.
  progress = Progress(f"decoding {split}".strip(), len(files), "images", every=0.1)
  arrays = []
  with concurrent.futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    for array in pool.map(_decode, files):
      arrays.append(array)
      progress.update(len(arrays))
  shapes = {a.shape for a in arrays}
  if len(shapes) != 1:
    raise ValueError(f"data.path: the images differ in size ({sorted(shapes)[:3]}...); all must have one size")
  return np.stack(arrays)


def folder(path: str, cache_dir: str = "", per_class: int = 0) -> Source:
  """A class-per-subfolder tree (class folders sorted give the label order)."""
  if not path:
    raise ValueError("data.path is empty; data.source='folder' needs DIR with train/<class>/ and test/<class>/")
  root = pathlib.Path(path).expanduser().resolve()
  if not root.is_dir():
    raise ValueError(f"data.path={path!r} is not a folder; data.source='folder' needs DIR with "
                      "train/<class>/ and test/<class>/")
  names, train_files, train_labels = _list_split(root, "train", per_class, None)
  _, test_files, test_labels = _list_split(root, "test", per_class, names)

  # The key covers every file's name, size and modification time: a changed tree re-decodes.
  digest = hashlib.sha256(f"{root}|{per_class}".encode())
  for p in (*train_files, *test_files):
    st = p.stat()
    digest.update(f"{p.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
  cache = pathlib.Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
  cache_file = cache / f"folder-{root.name}-{digest.hexdigest()[:16]}.npz"
  if cache_file.exists():
    try:
      with np.load(cache_file) as z:
        return Source(Split(z["train_images"], z["train_labels"]), Split(z["test_images"], z["test_labels"]),
                      tuple(str(n) for n in z["class_names"]))
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
      # Derived data: decoded again and rewritten.
      logging.warning("the decode cache %s is unreadable (%s: %s); decoding the images again", cache_file,
                      type(e).__name__, e)
  logging.info("decoding %d images of %s once (cached in %s); per class, train: %s, test: %s",
               len(train_files) + len(test_files), root, cache_file, np.bincount(train_labels).tolist(),
               np.bincount(test_labels).tolist())

  t0 = time.perf_counter()
  train = Split(_decode_all(train_files, "train"), train_labels)
  source = Source(train, Split(_decode_all(test_files, "test"), test_labels), names)
  logging.info("decoded %d images in %.1f s", len(train_files) + len(test_files), time.perf_counter() - t0)
  with atomic_open(cache_file, "wb") as f:
    np.savez_compressed(f, train_images=source.train.images, train_labels=source.train.labels,
                        test_images=source.test.images, test_labels=source.test.labels, class_names=np.asarray(names))
  return source


# --- tensorflow-datasets -----------------------------------------------------------------------

_OFFLINE_HINT = ("offline, use the folder source instead: --config.data.source=folder "
                 "--config.data.path=DIR (DIR/train/<class>/*.jpg, DIR/test/<class>/*.jpg)")


def hide_gpus_from_tensorflow(tf) -> None:
  """TensorFlow only reads files here: it must not take GPU memory from JAX in the same process
  (by default it claims nearly all of every GPU it sees; JAX's GPU memory docs name this as a
  cause of out-of-memory errors). Possible only before TensorFlow first touches a GPU."""
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError as e:  # TensorFlow had already initialised its GPUs in this process
    logging.warning("TensorFlow already uses the GPUs in this process (%s); JAX may run out of GPU memory", e)


def cifar10(data_dir: str | None = None, per_class: int = 0) -> Source:
  """CIFAR-10 through tensorflow-datasets (downloads on first use)."""
  try:
    tf = importlib.import_module("tensorflow")  # tfds needs it to read CIFAR; checked here for a clear message
    hide_gpus_from_tensorflow(tf)
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f"data.source='cifar10' needs tensorflow-datasets and TensorFlow ({e}); install them with "
                      f"pip install -e '.[tfds]', or {_OFFLINE_HINT}") from None

  def split(name: str) -> Split:
    # Batches of 10,000 rather than batch_size=-1, whose single-element path aborts in some
    # TensorFlow builds (seen with 2.21) and needs the whole split twice in memory.
    batches = list(tfds.as_numpy(tfds.load("cifar10", split=name, batch_size=10_000, as_supervised=True,
                                           data_dir=data_dir)))
    images = np.concatenate([b[0] for b in batches]).astype(np.uint8)
    labels = np.concatenate([b[1] for b in batches]).astype(np.int32)
    return take_per_class(Split(images, labels), per_class)

  try:
    train, test = split("train"), split("test")
  except Exception as e:  # download or preparation failed: no network, no disk, ...
    raise ValueError(f"data.source='cifar10' could not be loaded ({type(e).__name__}: {e}); "
                      f"{_OFFLINE_HINT}") from None
  return Source(train, test, CIFAR10_CLASSES)
