"""The binary and its config checks: a user mistake is one clear line and a non-zero exit."""

import re
import signal
import subprocess
import sys

import pytest

from configs import default, quickstart, resnet, vgg16
from saliency_jax.config_checks import ConfigError
from saliency_jax.config_checks import check_config
from tests.conftest import REPO

BAD_SETTINGS = [
    ("model.name", "resnet50", "model.name='resnet50' is not allowed; choose one of: 'resnet18', 'vgg16'"),
    ("data.source", "imagenet", "data.source='imagenet' is not allowed; choose one of: 'cifar10', 'folder'"),
    ("train.eval_conditions", ("pixel", "blur"), "train.eval_conditions contains 'blur'"),
    ("pixel.variant", "shape", "pixel.variant='shape' is not allowed"),
    ("train.learning_rate", 0.0, "train.learning_rate=0.0 is not allowed; it must be a positive number"),
    ("train.learning_rate", -0.1, "train.learning_rate=-0.1 is not allowed"),
    ("train.batch_size", 0, "train.batch_size=0 is not allowed; it must be a positive integer"),
    ("train.epochs", -3, "train.epochs=-3 is not allowed; it must be a positive integer"),
    ("train.dtype", "float16", "train.dtype='float16' is not allowed; choose one of: 'float32', 'bfloat16'"),
    ("train.epoch_loop", "while", "train.epoch_loop='while' is not allowed"),
    ("data.normalization", "none", "data.normalization='none' is not allowed"),
    ("pixel.position_sd", -1.0, "pixel.position_sd=-1.0 is not allowed; it must be >= 0"),
]


def test_a_model_of_other_classes_than_the_data_is_refused_by_the_stages(tiny_config, tmp_path):
  from saliency_jax import pipeline  # pylint: disable=g-import-not-at-top
  tiny_config.model.num_classes = 1000
  with pytest.raises(ConfigError, match="model.num_classes=1000 but the data has 10 classes; .* attribution.Explainer"):
    pipeline.run(tiny_config, tmp_path)
  tiny_config.model.num_classes = 10  # the data's: the same as 0
  tiny_config.cpu_lowering = "fast"
  with pytest.raises(ConfigError, match="cpu_lowering='fast' is not allowed; choose one of: 'auto', 'on', 'off'"):
    pipeline.run(tiny_config, tmp_path)


@pytest.mark.parametrize("field,value,message", BAD_SETTINGS)
def test_bad_settings_are_named(field, value, message):
  config = quickstart.get_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(ValueError) as error:
    check_config(config, num_devices=1)
  assert message in str(error.value)


def test_batch_size_must_divide_over_the_devices():
  config = quickstart.get_config()
  config.train.batch_size = 66
  with pytest.raises(ValueError, match="train.batch_size=66 does not divide over the 4 devices; use a multiple of 4"):
    check_config(config, num_devices=4)
  check_config(config, num_devices=2)


def test_missing_data_folder_is_named(tmp_path):
  config = quickstart.get_config()
  config.data.source = "folder"
  config.data.path = str(tmp_path / "nowhere")
  with pytest.raises(ValueError, match="data.path=.*nowhere.* is not a folder"):
    check_config(config, num_devices=1)


def test_shipped_configs_are_valid():
  for module in (default, quickstart, resnet, vgg16):
    check_config(module.get_config(), num_devices=1)
  assert resnet.get_config().pixel.location == (26, 15)
  assert vgg16.get_config().model.name == "vgg16"
  paper = resnet.get_config().train
  assert (paper.learning_rate, paper.momentum, paper.weight_decay, paper.batch_size, paper.epochs,
          paper.checkpoint_every_epochs) == (0.001, 0.9, 0.0, 256, 200, 10)


def _run(tmp_path, *flags):
  return subprocess.run([sys.executable, "-m", "saliency_jax.main", "--config=configs/quickstart.py",
                         f"--workdir={tmp_path}", *flags], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("flag,field", [
    ("--config.model.name=resnet50", "model.name"),
    ("--config.train.learning_rate=-1", "train.learning_rate"),
    ("--config.data.source=folder", "data.path"),
])
def test_binary_reports_one_line_and_exits_non_zero(tmp_path, flag, field):
  result = _run(tmp_path, flag)
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and field in errors[0]
  assert "Traceback" not in result.stderr


def test_a_setting_that_does_not_exist_or_a_config_that_fails_to_load_is_one_line(tmp_path):
  (tmp_path / "typo.py").write_text("from configs import quickstart\n\n\ndef get_config():\n"
                                    "  config = quickstart.get_config()\n  config.train.learnign_rate = 0.1\n"
                                    "  return config\n")
  (tmp_path / "wrong_type.py").write_text((tmp_path / "typo.py").read_text().replace("train.learnign_rate = 0.1",
                                                                                    "train.epochs = 'five'"))
  (tmp_path / "unlocked.py").write_text((tmp_path / "typo.py").read_text().replace(
      "  config.train.learnign_rate = 0.1", "  with config.unlocked():\n    config.train.learnign_rate = 0.1"))
  typo, quickstart = str(tmp_path / "typo.py"), "--config=configs/quickstart.py"
  for flags, expected in (
      ((f"--config={typo}",),
       "typo.py, line 6 (config.train.learnign_rate = 0.1): 'learnign_rate' is not a setting; did you mean "
       "'learning_rate'?"),
      # The file's own typo is named even when a flag of the same name follows; `--config FILE` too.
      (("--config", typo, "--config.train.learnign_rate=1"), "typo.py, line 6 (config.train.learnign_rate = 0.1)"),
      ((quickstart, "--config.train.learnign_rate=0.1"),
       "--config.train.learnign_rate: 'learnign_rate' is not a setting"),
      ((quickstart, "--config.trian.epochs=1"), "--config.trian.epochs: 'trian' is not a setting; did you mean 'train'?"),
      (("--config=configs/nothing_here.py",), "--config=configs/nothing_here.py: no such file"),
      ((f"--config={tmp_path / 'wrong_type.py'}",), "wrong_type.py, line 6 (config.train.epochs = 'five'): TypeError"),
      # The lock turned off by hand: the binary still compares the config with default.py's fields.
      ((f"--config={tmp_path / 'unlocked.py'}",), "sets train.learnign_rate, which configs/default.py does not declare"),
      (("--config=configs/sanity.py:nosuch",), "ValueError: config argument 'nosuch' is not allowed")):
    result = subprocess.run([sys.executable, "-m", "saliency_jax.main", *flags, f"--workdir={tmp_path / 'w'}"],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 2 and len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "w").exists()


def test_binary_trains_with_overrides(tmp_path):
  result = _run(tmp_path, "--config.train.epochs=1", "--config.data.synthetic_train_per_class=20",
                "--config.data.synthetic_test_per_class=5", "--config.train.batch_size=32",
                "--config.single_pixel.enabled=False")  # the grid: tests/test_single_pixel.py, through pipeline.run
  assert result.returncode == 0, result.stderr[-2000:]
  assert "epoch 1/1" in result.stderr
  assert (tmp_path / "metrics.csv").exists() and (tmp_path / "checkpoints" / "1").is_dir()
  assert "orbax" not in result.stderr.lower().replace("orbax-checkpoint", "")  # checkpoint chatter filtered
  assert "Unable to initialize backend" not in result.stderr  # no TPU: not news on a CPU or GPU machine


def test_help_lists_the_config_fields_with_their_comments_and_exits_zero():
  result = subprocess.run([sys.executable, "-m", "saliency_jax.main", "--help"], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "--config.train.learning_rate=0.001" in result.stdout
  assert "a class-balanced subset of N test images" in result.stdout  # single_pixel.max_images' comment
  # The names a config takes: every registered method and every sanity study, and where your own go.
  for name in ("integrated_gradients", "smoothgrad_squared", "lrp_gamma", "cascading", "label_randomization",
               "--config.imports=my_methods"):
    assert name in result.stdout, name
  # Every field of configs/default.py is listed with a comment of its own, on one line.
  fields = re.findall(r"^  --config\.([\w.]+)=.*\n(?!      )", result.stdout, re.M)
  assert not fields, f"fields without a comment: {fields}"


def test_ctrl_c_during_training_ends_with_one_line_saying_how_to_resume(tmp_path):
  process = subprocess.Popen([sys.executable, "-m", "saliency_jax.main", "--config=configs/quickstart.py",
                              f"--workdir={tmp_path}", "--config.train.epochs=50", "--config.train.checkpoint_every_epochs=1",
                              "--config.data.synthetic_train_per_class=20", "--config.data.synthetic_test_per_class=5",
                              "--config.train.batch_size=32"], cwd=REPO, stderr=subprocess.PIPE, text=True,
                             # A runner may ignore SIGINT (pytest-xdist's workers do), and a child that starts
                             # with it ignored never installs Python's Ctrl-C handler: restore the default.
                             preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  lines = []
  for line in process.stderr:  # wait until an epoch (and its checkpoint) is done
    lines.append(line)
    if "epoch 2/50" in line:
      break
  process.send_signal(signal.SIGINT)
  rest = process.communicate(timeout=120)[1]
  assert process.returncode == 130
  assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
  interrupted = [line for line in rest.splitlines() if line.startswith("interrupted:")]
  assert len(interrupted) == 1 and "rerun the same command to resume" in interrupted[0]


def test_a_workdir_in_use_or_that_is_a_file_is_refused_with_one_line(tmp_path, tiny_config):
  import fcntl  # pylint: disable=g-import-not-at-top

  from saliency_jax import pipeline  # pylint: disable=g-import-not-at-top

  tmp_path.joinpath(".lock").write_text("12345")
  with open(tmp_path / ".lock", "a+") as other:  # another run holds the lock
    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with pytest.raises(ConfigError, match=r"in use by another run \(pid 12345\)"):
      pipeline.run(tiny_config, tmp_path)
  assert not (tmp_path / "metrics.csv").exists()
  (tmp_path / "a_file").write_text("")
  with pytest.raises(ConfigError, match="is a file"):
    pipeline.run(tiny_config, tmp_path / "a_file")


def test_a_rerun_that_would_change_the_trained_model_is_refused_naming_the_fields(tmp_path, tiny_config):
  from saliency_jax import pipeline  # pylint: disable=g-import-not-at-top

  config = tiny_config
  config.single_pixel.enabled, config.train.epochs = False, 1
  pipeline.run(config, tmp_path)
  config.seed, config.train.learning_rate = 1, 0.5
  with pytest.raises(ConfigError, match=r"other settings \(seed: 0 there, 1 here; train.learning_rate: 0.03 there"):
    pipeline.run(config, tmp_path)
  config.seed, config.train.learning_rate = 0, 0.03
  config.train.epochs, config.single_pixel.enabled = 2, True  # training longer and evaluating: allowed
  config.single_pixel.max_images, config.single_pixel.methods = 20, ("gradient",)
  assert pipeline.run(config, tmp_path)["train"].epoch == 2
