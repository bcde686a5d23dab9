"""Data: the planted pixel in uint8, jitter and conditions, normalisation, the three sources."""

import importlib.util
import sys
import types

import jax
import numpy as np
import pytest
from PIL import Image

from configs import default
from saliency_jax import data
from saliency_jax.data import pixel, sources
from tests.conftest import SHARED_CIFAR


def _pixel_config(**overrides):
  config = default.get_config().pixel
  for k, v in overrides.items():
    config[k] = v
  return config


def _images(n=50, seed=0):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n).astype(np.int32)


def test_colour_code_is_the_spec_table():
  np.testing.assert_array_equal(pixel.colour_code(10)[:, 0], [10, 36, 62, 88, 114, 141, 167, 193, 219, 245])
  assert np.all(pixel.colour_code(10)[:, 1] == 10) and np.all(pixel.colour_code(10)[:, 2] == 245)


def test_pixel_is_exactly_the_class_colour_and_nothing_else_changes():
  images, labels = _images()
  spec = pixel.make_spec(_pixel_config(location=(26, 15)), jax.random.key(0), 10)
  out = pixel.apply_condition(images, labels, "pixel", spec, jax.random.key(1))
  got = np.asarray(out.images_BHWC)
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got[:, 26, 15], pixel.colour_code(10)[labels])
  changed = np.any(got != images, axis=-1)
  changed[:, 26, 15] = False
  assert not changed.any()
  np.testing.assert_array_equal(out.location_B2, np.tile([26, 15], (len(labels), 1)))
  np.testing.assert_array_equal(out.pixel_class_B, labels)


def test_location_is_drawn_from_the_data_seed():
  draw = lambda seed: tuple(np.asarray(pixel.make_spec(_pixel_config(), jax.random.key(seed), 10).locations_K2[0]))
  assert draw(3) == draw(3)
  assert len({draw(s) for s in range(8)}) > 4
  assert all(0 <= v < 32 for s in range(8) for v in draw(s))


def test_nopix_is_untouched_and_conflict_uses_another_class():
  images, labels = _images(400)
  spec = pixel.make_spec(_pixel_config(location=(3, 4)), jax.random.key(0), 10)
  nopix = pixel.apply_condition(images, labels, "nopix", spec, jax.random.key(1))
  np.testing.assert_array_equal(nopix.images_BHWC, images)
  assert np.all(np.asarray(nopix.pixel_class_B) == -1)
  conflict = pixel.apply_condition(images, labels, "conflict", spec, jax.random.key(1))
  cls = np.asarray(conflict.pixel_class_B)
  assert np.all(cls != labels) and len(np.unique(cls)) == 10
  np.testing.assert_array_equal(np.asarray(conflict.images_BHWC)[:, 3, 4], pixel.colour_code(10)[cls])


def test_jitter_is_reproducible_and_clipped():
  images, labels = _images(500)
  spec = pixel.make_spec(_pixel_config(location=(0, 31)), jax.random.key(0), 10)
  run = lambda key: pixel.apply_condition(images, labels, "pixel", spec, jax.random.key(key), position_sd=3.0,
                                          colour_sd=5.0)
  a, b, c = run(7), run(7), run(8)
  np.testing.assert_array_equal(a.images_BHWC, b.images_BHWC)
  assert not np.array_equal(a.location_B2, c.location_B2)
  loc = np.asarray(a.location_B2)
  assert loc.min() >= 0 and loc.max() <= 31
  assert loc[:, 0].min() == 0 and loc[:, 0].max() > 0  # at the top edge: clipped, and moved
  # The colour is the code plus rounded noise of std 5 (the code is far from 0 and 255 except 10/245).
  rows, cols = loc[:, 0], loc[:, 1]
  colour = np.asarray(a.images_BHWC)[np.arange(500), rows, cols].astype(int)
  noise = colour - pixel.colour_code(10)[labels]
  assert 4.0 < noise[:, 1].std() < 6.0 and abs(noise[:, 1].mean()) < 1.0
  assert colour.max() <= 255


def test_location_variant_uses_one_colour_and_a_location_per_class():
  images, labels = _images(300)
  spec = pixel.make_spec(_pixel_config(variant="location", fixed_colour=(1, 2, 3)), jax.random.key(0), 10)
  locations = np.asarray(spec.locations_K2)
  assert len({tuple(l) for l in locations}) == 10
  out = np.asarray(pixel.apply_condition(images, labels, "pixel", spec, jax.random.key(1)).images_BHWC)
  np.testing.assert_array_equal(out[np.arange(300), locations[labels, 0], locations[labels, 1]],
                                np.tile([1, 2, 3], (300, 1)))
  given = tuple((k, k) for k in range(10))
  spec = pixel.make_spec(_pixel_config(variant="location", class_locations=given), jax.random.key(0), 10)
  np.testing.assert_array_equal(spec.locations_K2, np.asarray(given))


@pytest.mark.parametrize("overrides,field", [
    (dict(variant="size"), "pixel.variant"),
    (dict(location=(32, 0)), "pixel.location"),
    (dict(location=(1, 2, 3)), "pixel.location"),
    (dict(variant="location", class_locations=((0, 0),)), "pixel.class_locations"),
    (dict(variant="location", fixed_colour=(0, 0, 300)), "pixel.fixed_colour"),
])
def test_bad_pixel_settings_name_the_field(overrides, field):
  with pytest.raises(ValueError, match=field):
    pixel.make_spec(_pixel_config(**overrides), jax.random.key(0), 10)


def test_normalisation_constants_and_black_white():
  images, _ = _images(64)
  mean, std = data.channel_stats(images, chunk=10)
  flat = images.reshape(-1, 3) / 255.0
  np.testing.assert_allclose(mean, flat.mean(0), rtol=1e-10)
  np.testing.assert_allclose(std, flat.std(0), rtol=1e-8)
  norm = data.make_normalization("imagenet", images)
  np.testing.assert_allclose(norm.black()[0, 0, 0], -np.asarray(data.IMAGENET_MEAN) / data.IMAGENET_STD, rtol=1e-6)
  np.testing.assert_allclose(norm.white()[0, 0, 0], (1 - np.asarray(data.IMAGENET_MEAN)) / data.IMAGENET_STD,
                             rtol=1e-6)
  dataset = data.make_normalization("dataset", images)
  normalised = np.asarray(dataset(images)).reshape(-1, 3)
  np.testing.assert_allclose(normalised.mean(0), 0, atol=1e-5)
  np.testing.assert_allclose(normalised.std(0), 1, atol=1e-4)
  with pytest.raises(ValueError, match="data.normalization"):
    data.make_normalization("per_image", images)


def test_synthetic_source_is_deterministic():
  a = sources.synthetic(5, 3, 2)
  b = sources.synthetic(5, 3, 2)
  c = sources.synthetic(6, 3, 2)
  np.testing.assert_array_equal(a.train.images, b.train.images)
  assert not np.array_equal(a.train.images, c.train.images)
  assert a.train.images.shape == (30, 32, 32, 3) and a.test.images.shape == (20, 32, 32, 3)
  assert np.bincount(a.train.labels).tolist() == [3] * 10


def test_prepare_plants_the_pixel_in_train_and_test(tiny_config):
  tiny_config.pixel.location = (5, 6)
  prepared = data.prepare(tiny_config)
  code = pixel.colour_code(10)
  np.testing.assert_array_equal(np.asarray(prepared.train.images_BHWC)[:, 5, 6], code[prepared.train.labels_B])
  assert set(prepared.tests) == set(data.CONDITIONS)
  np.testing.assert_array_equal(prepared.tests["nopix"].images_BHWC, prepared.source.test.images)
  again = data.prepare(tiny_config)
  np.testing.assert_array_equal(again.tests["conflict"].pixel_class_B, prepared.tests["conflict"].pixel_class_B)


def _write_tree(root, per_class=3, classes=("cat", "ant", "bee"), size=(32, 32)):
  rng = np.random.default_rng(0)
  written = {}
  for split in ("train", "test"):
    for name in classes:
      (root / split / name).mkdir(parents=True)
      for i in range(per_class):
        image = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / split / name / f"{i:04d}.png")  # lossless
        written[(split, name, i)] = image
  return written


def test_folder_source_reads_sorted_classes_and_caches(tmp_path, monkeypatch):
  written = _write_tree(tmp_path / "tree")
  source = sources.folder(str(tmp_path / "tree"), cache_dir=str(tmp_path / "cache"))
  assert source.class_names == ("ant", "bee", "cat")
  assert source.train.images.shape == (9, 32, 32, 3) and source.train.images.dtype == np.uint8
  np.testing.assert_array_equal(source.train.labels, [0, 0, 0, 1, 1, 1, 2, 2, 2])
  np.testing.assert_array_equal(source.train.images[0], written[("train", "ant", 0)])
  np.testing.assert_array_equal(source.test.images[8], written[("test", "cat", 2)])
  assert len(list((tmp_path / "cache").glob("*.npz"))) == 1

  def no_decoding(_):
    raise AssertionError("decoded again instead of reading the cache")

  monkeypatch.setattr(sources, "_decode", no_decoding)
  cached = sources.folder(str(tmp_path / "tree"), cache_dir=str(tmp_path / "cache"))
  np.testing.assert_array_equal(cached.test.images, source.test.images)
  assert cached.class_names == source.class_names


def test_folder_source_errors_name_data_path(tmp_path):
  with pytest.raises(ValueError, match="data.path"):
    sources.folder(str(tmp_path / "missing"))
  (tmp_path / "only_train" / "train" / "a").mkdir(parents=True)
  with pytest.raises(ValueError, match="test/"):
    sources.folder(str(tmp_path / "only_train"))


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason="../shared/data/cifar10-jpeg is not present")
def test_folder_source_on_the_real_cifar10_copy(tmp_path):
  source = sources.folder(str(SHARED_CIFAR), cache_dir=str(tmp_path), per_class=20)
  assert source.class_names == sources.CIFAR10_CLASSES
  assert source.train.images.shape == (200, 32, 32, 3) and source.test.images.shape == (200, 32, 32, 3)
  assert np.bincount(source.test.labels).tolist() == [20] * 10
  # Natural images, not noise: neighbouring pixels are strongly correlated.
  x = source.train.images.astype(float)
  assert np.corrcoef(x[:, :, :-1].ravel(), x[:, :, 1:].ravel())[0, 1] > 0.8
  assert 90 < x.mean() < 150


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None
                    or importlib.util.find_spec("tensorflow_datasets") is None,
                    reason="TensorFlow / tensorflow-datasets not installed (the cifar10 source is optional)")
def test_cifar10_source_under_tfds_mock_data():
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  with tfds.testing.mock_data(num_examples=30):
    source = sources.cifar10(per_class=0)
  assert source.class_names == sources.CIFAR10_CLASSES
  assert source.train.images.shape == (30, 32, 32, 3) and source.train.images.dtype == np.uint8
  assert source.train.labels.dtype == np.int32 and source.train.labels.max() < 10


def test_cifar10_source_without_tensorflow_names_the_folder_alternative(monkeypatch):
  import builtins  # pylint: disable=g-import-not-at-top

  real_import = builtins.__import__

  def fake_import(name, *args, **kwargs):
    if name.startswith("tensorflow"):
      raise ImportError(f"No module named {name!r}")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", fake_import)
  with pytest.raises(ValueError, match="data.source=folder"):
    sources.cifar10()


def test_cifar10_source_hides_the_gpus_from_tensorflow_before_tfds_reads(monkeypatch):
  # Stubs of both modules (TensorFlow is an optional extra): what matters is the order of calls.
  calls = []
  tf = types.ModuleType("tensorflow")
  tf.config = types.SimpleNamespace(set_visible_devices=lambda devices, kind: calls.append(("hide", devices, kind)))
  tfds = types.ModuleType("tensorflow_datasets")
  rng = np.random.default_rng(0)

  def load(name, split, **_):
    calls.append(("load", name, split))
    return [(rng.integers(0, 256, (20, 32, 32, 3)), np.arange(20) % 10)]

  tfds.load, tfds.as_numpy = load, lambda batches: batches
  monkeypatch.setitem(sys.modules, "tensorflow", tf)
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", tfds)
  source = sources.cifar10()
  assert calls == [("hide", [], "GPU"), ("load", "cifar10", "train"), ("load", "cifar10", "test")]
  assert source.train.images.shape == (20, 32, 32, 3) and source.train.images.dtype == np.uint8


def test_take_per_class_keeps_the_first_of_each_class():
  split = sources.Split(np.arange(12).reshape(12, 1, 1, 1).astype(np.uint8),
                        np.asarray([0, 1, 0, 1, 0, 1, 0, 1, 2, 2, 2, 2], np.int32))
  kept = sources.take_per_class(split, 2)
  np.testing.assert_array_equal(kept.images.ravel(), [0, 1, 2, 3, 8, 9])


def test_balanced_indices_are_seeded_class_balanced_and_every_prefix_is_too():
  labels = np.repeat(np.arange(10), [100, 100, 100, 100, 100, 100, 100, 100, 100, 3])  # class 9 is short
  idx = data.balanced_indices(labels, 100, seed=0)
  assert len(idx) == len(set(idx)) == 100
  counts = np.bincount(labels[idx], minlength=10)
  assert counts[9] == 3 and set(counts[:9]) <= {10, 11}  # the short class gives way to the others
  np.testing.assert_array_equal(np.bincount(labels[idx[:20]], minlength=10), [2] * 10)  # a prefix: balanced
  np.testing.assert_array_equal(idx, data.balanced_indices(labels, 100, seed=0))
  assert not np.array_equal(idx, data.balanced_indices(labels, 100, seed=1))
  assert not np.all(np.diff(idx[labels[idx] == 0]) > 0)  # shuffled within a class, not the first N
  np.testing.assert_array_equal(data.balanced_indices(labels, 0, seed=0), np.arange(len(labels)))
  np.testing.assert_array_equal(data.balanced_indices(labels, 5000, seed=0), np.arange(len(labels)))


def test_folder_source_faults_are_one_line_or_repaired(tmp_path):
  _write_tree(tmp_path / "tree", per_class=2)
  cache = tmp_path / "cache"
  source = sources.folder(str(tmp_path / "tree"), cache_dir=str(cache))
  # A corrupt decode cache is derived data: detected and rebuilt from the images.
  (cache_file,) = cache.glob("*.npz")
  cache_file.write_bytes(cache_file.read_bytes()[:100])
  np.testing.assert_array_equal(sources.folder(str(tmp_path / "tree"), cache_dir=str(cache)).train.images,
                                source.train.images)
  # A truncated image and a text file named .jpg are named, not a traceback.
  (tmp_path / "tree" / "train" / "ant" / "0000.png").write_bytes(b"\x89PNG\r\n")
  with pytest.raises(ValueError, match="0000.png is not a readable image"):
    sources.folder(str(tmp_path / "tree"), cache_dir=str(tmp_path / "cache2"))
  (tmp_path / "tree" / "train" / "ant" / "0000.png").unlink()
  (tmp_path / "tree" / "train" / "ant" / "notes.jpg").write_text("not an image")
  with pytest.raises(ValueError, match="notes.jpg is not a readable image"):
    sources.folder(str(tmp_path / "tree"), cache_dir=str(tmp_path / "cache3"))
  # An empty class folder is an error, not a silent 2-class run.
  for f in (tmp_path / "tree" / "train" / "ant").iterdir():
    f.unlink()
  with pytest.raises(ValueError, match="'train/ant/' has no images"):
    sources.folder(str(tmp_path / "tree"), cache_dir=str(tmp_path / "cache4"))
