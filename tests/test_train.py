"""Training: PyTorch's SGD, a step that learns, resume, devices, the scan/python loops, NaN."""

import csv
import logging

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs import quickstart
from saliency_jax import data as data_lib
from saliency_jax import models, progress
from saliency_jax.training import TrainingDiverged, init_state, make_optimizer, parallel, train_and_evaluate
from saliency_jax.training.steps import Steps


def _leaves_equal(a, b, **tol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    if tol:
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), **tol)
    else:
      np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_sgd_has_pytorch_semantics():
  # torch.optim.SGD(lr, momentum, weight_decay), dampening 0, by hand on f(p) = p^2 / 2:
  #   g = p + wd * p;  buf = momentum * buf + g (buf = g at the first step);  p -= lr * buf
  lr, momentum, wd = 0.1, 0.9, 0.01
  optimizer = make_optimizer(ml_collections.ConfigDict(dict(learning_rate=lr, momentum=momentum, weight_decay=wd)))
  p, buf = 1.0, 0.0
  params = jnp.asarray(1.0)
  state = optimizer.init(params)
  for _ in range(4):
    g = p + wd * p
    buf = momentum * buf + g
    p = p - lr * buf
    updates, state = optimizer.update(params, state, params)  # grad of p^2/2 is p
    params = optax.apply_updates(params, updates)
    assert float(params) == pytest.approx(p, rel=1e-6)


def _tiny_steps(model_name="small_cnn", lr=0.05, batch=32, **options):
  model = models.create_model(model_name, **options)
  optimizer = make_optimizer(ml_collections.ConfigDict(dict(learning_rate=lr, momentum=0.9, weight_decay=0.0)))
  normalization = data_lib.Normalization(jnp.full(3, 0.5), jnp.full(3, 0.25))
  return model, optimizer, Steps(model, optimizer, normalization, batch, 40)


def _tiny_data(n=64):
  source = data_lib.sources.synthetic(0, n // 10 + 1, 4)
  return source.train.images[:n], source.train.labels[:n]


def test_training_steps_lower_the_loss(one_device_mesh):
  model, optimizer, steps = _tiny_steps()
  images, labels = _tiny_data(32)
  with jax.set_mesh(one_device_mesh):
    state = init_state(model, optimizer, jax.random.key(0))
    x, y = parallel.put_replicated((images, labels), one_device_mesh)
    step = jax.jit(steps.train_step)
    losses = []
    for _ in range(10):
      state, loss, _ = step(state, x, y, jax.random.key(0))
      losses.append(float(loss))
  # The same batch ten times: every step lowers the loss, and the batch is nearly learnt.
  assert all(b < a for a, b in zip(losses, losses[1:]))
  assert losses[-1] < 0.1 * losses[0]


def _one_epoch(mesh, model_name="small_cnn", loop="python", **options):
  model, optimizer, steps = _tiny_steps(model_name, **options)
  images, labels = _tiny_data(64)
  with jax.set_mesh(mesh):
    state = jax.jit(lambda k: init_state(model, optimizer, k), out_shardings=parallel.replicated(mesh))(
        jax.random.key(0))
    x, y = parallel.put_replicated((images, labels), mesh)
    state, metrics = steps.train_epoch(state, x, y, 3, 1, loop)
    correct = steps.count_correct(state.variables, x, y, loop)
  return parallel.to_host(state), parallel.to_host(metrics), int(correct)


def test_four_devices_compute_the_same_update_as_one():
  # The MLP has no max-pool, whose near-ties can route a gradient differently when
  # float sums are merely reordered; so here the states must agree to rounding.
  assert len(jax.devices()) >= 4, "conftest sets jax_num_cpu_devices=4"
  one = _one_epoch(parallel.make_mesh(jax.devices()[:1]), "mlp")
  four = _one_epoch(parallel.make_mesh(jax.devices()[:4]), "mlp")
  _leaves_equal(one[0], four[0], rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(one[1]["loss_S"], four[1]["loss_S"], rtol=1e-5)
  assert one[2] == four[2]


def test_dropout_trains_on_four_devices_as_on_one():
  # VGG's classifier dropout under a batch-split mesh (a narrow VGG keeps it fast).
  options = dict(layout=(8, "M", 8, "M"), lr=1e-3)
  one = _one_epoch(parallel.make_mesh(jax.devices()[:1]), "vgg16", **options)
  four = _one_epoch(parallel.make_mesh(jax.devices()[:4]), "vgg16", **options)
  _leaves_equal(one[0], four[0], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(one[1]["loss_S"], four[1]["loss_S"], rtol=1e-5)


def test_batchnorm_statistics_are_global_across_devices():
  # ResNet has BatchNorm: with per-device statistics four devices would differ from one.
  # One stage of one block keeps it quick; the BatchNorm code is resnet18's.
  one = _one_epoch(parallel.make_mesh(jax.devices()[:1]), "resnet18", stage_sizes=(1,))
  four = _one_epoch(parallel.make_mesh(jax.devices()[:4]), "resnet18", stage_sizes=(1,))
  _leaves_equal(one[0].batch_stats, four[0].batch_stats, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(one[1]["loss_S"], four[1]["loss_S"], rtol=1e-4)


def test_scan_epoch_equals_python_loop_epoch(one_device_mesh):
  scan = _one_epoch(one_device_mesh, loop="scan")
  python = _one_epoch(one_device_mesh, loop="python")
  _leaves_equal(scan[0], python[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(scan[1]["loss_S"], python[1]["loss_S"], rtol=1e-5)
  assert scan[2] == python[2]


def test_a_run_with_the_scan_loop_trains_and_tests_as_the_python_loop(tmp_path, tiny_config, one_device_mesh):
  # The GPU default (train.epoch_loop='auto' is 'scan' there: an epoch, and each test set's count,
  # as one compiled scan) against the CPU default, through train_and_evaluate. The MLP keeps the
  # scan's compile short on CPU; the per-step equality of a CNN: the test above.
  tiny_config.model.name = "mlp"
  runs = {}
  for loop in ("scan", "python"):
    tiny_config.train.epoch_loop = loop
    runs[loop] = train_and_evaluate(tiny_config, tmp_path / loop, mesh=one_device_mesh)
  assert len(runs["scan"].metrics) == tiny_config.train.epochs
  for scan, python in zip(runs["scan"].metrics, runs["python"].metrics, strict=True):
    # float32 sums fused differently inside the scan: rounding only
    assert scan["train_loss"] == pytest.approx(python["train_loss"], rel=1e-5)
    assert {k: v for k, v in scan.items() if k.endswith("_accuracy")} == \
        {k: v for k, v in python.items() if k.endswith("_accuracy")}
  _leaves_equal(runs["scan"].state.params, runs["python"].state.params, rtol=1e-5, atol=1e-6)


def _read_metrics(workdir):
  with open(workdir / "metrics.csv", newline="") as f:
    return list(csv.DictReader(f))


def test_quickstart_end_to_end(tmp_path, one_device_mesh):
  config = quickstart.get_config()
  config.train.epochs = 3
  config.train.tensorboard = True
  result = train_and_evaluate(config, tmp_path, mesh=one_device_mesh)
  rows = _read_metrics(tmp_path)
  assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
  last = rows[-1]
  # The model has found the pixel: far better with it than without, and misled by a wrong one.
  assert float(last["test_pixel_accuracy"]) > 0.6
  assert float(last["test_pixel_accuracy"]) > float(last["test_nopix_accuracy"]) + 0.3
  assert float(last["test_conflict_accuracy"]) < float(last["test_nopix_accuracy"])
  assert float(last["images_per_sec"]) > 0
  assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["2", "3"]
  assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
  assert result.state.step == 3 * (5000 // 64)


def test_resumed_run_equals_uninterrupted_run(tmp_path, tiny_config, one_device_mesh, caplog, monkeypatch):
  tiny_config.train.epochs = 3
  monkeypatch.setattr(progress, "QUIET_SECONDS", 0.0)  # these epochs take a second: report them anyway
  caplog.set_level(logging.INFO, logger="absl")
  full = train_and_evaluate(tiny_config, tmp_path / "full", mesh=one_device_mesh)
  lines = [r.getMessage() for r in caplog.records]
  for epoch in (1, 2, 3):
    within = [line for line in lines if line.startswith(f"epoch {epoch}/3: ")]
    # 12 steps: a line at a quarter, half and three quarters of the epoch, not one per step.
    assert [line.split(" (")[0] for line in within] == [f"epoch {epoch}/3: {k}/12 steps" for k in (3, 6, 9)]
    assert all("steps/s" in line and "left" in line and "loss" in line and "img/s" in line for line in within)
  assert "about" in next(line for line in lines if line.startswith("epoch 1/3  loss"))  # the run's time left

  tiny_config.train.epochs = 2  # "killed" after epoch 2 ...
  train_and_evaluate(tiny_config, tmp_path / "resumed", mesh=one_device_mesh)
  tiny_config.train.epochs = 3  # ... and the same command run again
  resumed = train_and_evaluate(tiny_config, tmp_path / "resumed", mesh=one_device_mesh)

  _leaves_equal(parallel.to_host(full.state), parallel.to_host(resumed.state))
  rows = _read_metrics(tmp_path / "resumed")
  assert [int(r["epoch"]) for r in rows] == [1, 2, 3]
  assert rows[2]["test_pixel_accuracy"] == _read_metrics(tmp_path / "full")[2]["test_pixel_accuracy"]


def test_a_finished_run_is_not_trained_again(tmp_path, tiny_config, one_device_mesh):
  first = train_and_evaluate(tiny_config, tmp_path, mesh=one_device_mesh)
  again = train_and_evaluate(tiny_config, tmp_path, mesh=one_device_mesh)
  _leaves_equal(parallel.to_host(first.state), parallel.to_host(again.state))
  assert len(_read_metrics(tmp_path)) == tiny_config.train.epochs


def test_nan_loss_stops_training_naming_epoch_and_step(tmp_path, tiny_config, one_device_mesh):
  tiny_config.model.name = "mlp"
  tiny_config.train.learning_rate = 1e12
  with pytest.raises(TrainingDiverged, match=r"epoch 1, step \d+ of 12"):
    train_and_evaluate(tiny_config, tmp_path, mesh=one_device_mesh)
  assert not list((tmp_path / "checkpoints").glob("[0-9]*"))


def test_bfloat16_training_runs(tmp_path, tiny_config, one_device_mesh):
  tiny_config.train.dtype = "bfloat16"
  tiny_config.train.epochs = 1
  result = train_and_evaluate(tiny_config, tmp_path, mesh=one_device_mesh)
  assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(result.state.params))
  assert np.isfinite(float(result.metrics[0]["train_loss"]))
