"""Test setup: 4 emulated CPU devices (set before JAX starts), tiny configs, the shared data."""

import atexit
import os
import pathlib
import shutil
import tempfile

import jax

# XLA:CPU aborts a program whose devices wait longer than 20 + 40 s for each other at a collective
# (rendezvous.cc). The emulated devices share the cores, so a loaded machine could delay one; the
# tests' steps take milliseconds and measured waits stay far below a second (warning threshold set
# to 1 s, load average 7 on 2 cores), but a stalled CI machine should slow the suite, not abort it.
# The flag exists from jaxlib 0.8 (openxla/xla#32115); older ones abort on an unknown flag.
_FLAGS = ["--xla_cpu_collective_call_terminate_timeout_seconds=600"] if jax.__version_info__ >= (0, 8, 1) else []
# Compiling, not running, is most of this suite's time, and most of compiling is LLVM's
# optimisation of the generated code. The level changes only that: the optimised HLO (fusions,
# library calls, this library's CPU forms) is the same as in production (checked: a chunked IG
# program's compiled HLO is identical at both levels), so the programs compute what they compute
# there, to float32 rounding. On 2 cores of an AMD EPYC the suite took 5:56 instead of 7:05-7:47; the
# benchmarks and every user's program keep the default.
_FLAGS.append("--xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""), *_FLAGS]).strip()

# Must happen before any JAX computation: the multi-device tests compare 4 devices with 1.
jax.config.update("jax_num_cpu_devices", 4)

# Compilation dominates this suite, and many tests compile the same programs again: a model's
# initialisation (a fresh jit per `init_variables` call), the tiny training steps, the grid's and
# the sanity studies' maps. JAX's compilation cache, in a folder of this process alone that is
# removed when it ends, hands back the executable of an identical program (same HLO, options,
# devices and JAX version) instead of compiling it again; nothing outlives the test run, and
# nothing is shared with another process (xdist's other worker, the binary's subprocesses).
_COMPILATION_CACHE = tempfile.mkdtemp(prefix="saliency_jax_tests_xla_cache_")
atexit.register(shutil.rmtree, _COMPILATION_CACHE, ignore_errors=True)
jax.config.update("jax_compilation_cache_dir", _COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)  # below that, compiling beats a file
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
# The binary turns a persistent cache on by itself (saliency_jax/backend.py), in the user's cache
# folder unless JAX_COMPILATION_CACHE_DIR names one: the binaries these tests start keep theirs in
# a folder of this test process, removed when it ends.
_BINARY_CACHE = tempfile.mkdtemp(prefix="saliency_jax_tests_binary_cache_")
atexit.register(shutil.rmtree, _BINARY_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _BINARY_CACHE
# The suite is written for CPU devices; on a machine with a GPU it stays on them (and the binary,
# told so, does not refuse to run on the CPU beside a visible GPU).
os.environ["JAX_PLATFORMS"] = "cpu"
jax.config.update("jax_platforms", "cpu")

import pytest  # noqa: E402

from configs import quickstart  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_CIFAR = REPO.parent / "shared" / "data" / "cifar10-jpeg"


def make_tiny_config():
  """The quickstart at a size that takes seconds: 40 synthetic images per class, 2 epochs."""
  config = quickstart.get_config()
  config.data.synthetic_train_per_class, config.data.synthetic_test_per_class = 40, 10
  config.train.batch_size, config.train.eval_batch_size = 32, 50
  config.train.epochs, config.train.checkpoint_every_epochs = 2, 1
  config.train.tensorboard = False
  return config


@pytest.fixture
def tiny_config():
  return make_tiny_config()


@pytest.fixture
def one_device_mesh():
  from saliency_jax.training import parallel  # pylint: disable=g-import-not-at-top

  return parallel.make_mesh(jax.devices()[:1])


@pytest.fixture(scope="session")
def tiny_trained_run(tmp_path_factory):
  """The tiny config's workdir, trained once per test process: read it or copy it, never write to it
  (`trained_tmp_path` is a copy to work in)."""
  from saliency_jax import pipeline  # pylint: disable=g-import-not-at-top

  config = make_tiny_config()
  config.single_pixel.enabled = False
  workdir = tmp_path_factory.mktemp("tiny_trained_run")
  pipeline.run(config, workdir)
  return workdir


@pytest.fixture
def trained_tmp_path(tiny_trained_run, tmp_path):
  """`tmp_path` holding a copy of the tiny config's run, trained (2 epochs, on every device, as
  `pipeline.run` trains) once per test process: for the tests of what comes after training. A
  `pipeline.run` of the tiny config there with `train.enabled` finds the training finished and
  restores its checkpoint; the model settings must stay the tiny config's."""
  shutil.copytree(tiny_trained_run, tmp_path, dirs_exist_ok=True)
  return tmp_path
