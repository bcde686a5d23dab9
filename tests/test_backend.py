"""The machine a run uses (saliency_jax/backend.py): the backend logged and a silent CPU fallback
refused, the compilation cache of the binary, evaluation sizes per device, the maps' precision."""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from configs import default
from saliency_jax import backend, models
from saliency_jax.attribution import core, registry
from saliency_jax.attribution.batching import BatchRunner
from saliency_jax.training import init_state
from tests.conftest import REPO
from tests.test_train import _tiny_steps

# --- the backend ---------------------------------------------------------------------------------


def _fake_nvidia_smi(folder, gpus: int):
  """An `nvidia-smi` on PATH that lists `gpus` GPUs, as `nvidia-smi -L` prints them."""
  folder.mkdir(exist_ok=True)
  script = folder / "nvidia-smi"
  lines = "".join(f"echo 'GPU {i}: NVIDIA H100 80GB HBM3 (UUID: GPU-{i:08d})'\n" for i in range(gpus))
  script.write_text(f"#!/bin/sh\n{lines}")
  script.chmod(0o755)
  return folder


def test_visible_gpus_are_those_nvidia_smi_lists_unless_cuda_visible_devices_hides_them(tmp_path, monkeypatch):
  monkeypatch.setattr(backend, "_NVIDIA_DEVICE", str(tmp_path / "no_such_device"))
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
  monkeypatch.setenv("PATH", str(_fake_nvidia_smi(tmp_path / "bin", 2)))
  assert backend.visible_nvidia_gpus() == 2
  for hidden in ("", "-1"):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
    assert backend.visible_nvidia_gpus() == 0
  monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
  monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no nvidia-smi, but the driver's device file
  (tmp_path / "nvidia0").touch()
  monkeypatch.setattr(backend, "_NVIDIA_DEVICE", str(tmp_path / "nvidia0"))
  assert backend.visible_nvidia_gpus() == 1


def test_a_cpu_backend_beside_a_visible_gpu_is_refused_unless_the_cpu_was_asked_for():
  with pytest.raises(ValueError, match=r"2 NVIDIA GPUs are visible .* JAX runs on the CPU.*cuda12.*JAX_PLATFORMS=cpu"):
    backend.check_backend("cpu", gpus=2, platforms=None)
  backend.check_backend("cpu", gpus=2, platforms="cpu")  # asked for
  backend.check_backend("cpu", gpus=0, platforms=None)  # no GPU
  backend.check_backend("gpu", gpus=2, platforms=None)  # the GPU is used


def test_the_binary_names_a_silent_cpu_fallback_in_one_line_before_any_work(tmp_path):
  env = {k: v for k, v in os.environ.items() if k not in ("JAX_PLATFORMS", "CUDA_VISIBLE_DEVICES")}
  env["PATH"] = f"{_fake_nvidia_smi(tmp_path / 'bin', 1)}{os.pathsep}{env['PATH']}"
  result = subprocess.run([sys.executable, "-m", "saliency_jax.main", "--config=configs/quickstart.py",
                           f"--workdir={tmp_path / 'run'}"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
  assert len(errors) == 1 and "1 NVIDIA GPU is visible" in errors[0] and "JAX_PLATFORMS=cpu" in errors[0]
  assert not (tmp_path / "run").exists()  # refused before the workdir was touched


# --- the compilation cache -----------------------------------------------------------------------

def test_the_compilation_cache_folder_is_the_setting_then_jaxs_own_then_the_users(tmp_path, monkeypatch):
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert backend.compilation_cache_folder("", configured=None) == tmp_path / "xdg" / "saliency_jax" / "jax"
  assert backend.compilation_cache_folder("", configured=str(tmp_path / "jaxs")) == tmp_path / "jaxs"
  mine = tmp_path / "mine"
  assert backend.compilation_cache_folder(str(mine), configured=str(tmp_path / "jaxs")) == mine
  assert backend.compilation_cache_folder("off", configured=str(tmp_path / "jaxs")) is None
  assert backend.compilation_cache_folder(" OFF ", configured=None) is None
  assert default.get_config().compilation_cache == ""  # on by default
  # That the binary reads programs back: tests/test_gpu_check.py (its rerun compiles none).


# --- evaluation sizes ----------------------------------------------------------------------------


class _FakeGPU:
  platform, device_kind, process_index = "gpu", "NVIDIA H100 80GB HBM3", 0

  def __init__(self, bytes_limit):
    self.bytes_limit = bytes_limit

  def memory_stats(self):
    return None if self.bytes_limit is None else {"bytes_limit": self.bytes_limit, "bytes_in_use": 0}


def _section(batch_size=0, chunk_size=0):
  return ml_collections.ConfigDict(dict(batch_size=batch_size, chunk_size=chunk_size))


def test_on_cpu_the_default_sizes_are_the_measured_ones_however_many_cpu_devices():
  config = default.get_config()
  for stage, expected in (("single_pixel", (250, 4)), ("sanity", (50, 8)), ("faithfulness", (50, 8))):
    assert backend.evaluation_sizes(stage, config[stage]) == expected  # the 4 devices of conftest
    assert backend.evaluation_sizes(stage, config[stage], jax.devices()[:1]) == expected
  assert backend.evaluation_sizes("single_pixel", _section(16, 0)) == (16, 4)  # a given value is kept
  assert backend.evaluation_sizes("single_pixel", _section(0, 100)) == (250, 100)
  with pytest.raises(ValueError, match="sanity.batch_size=-1 is not allowed"):
    backend.evaluation_sizes("sanity", _section(-1, 0))


def test_on_a_gpu_the_images_are_per_device_and_the_ig_chunk_fills_a_share_of_its_memory():
  gib = 2**30
  # 80 GiB: half of it at 2 MiB per image and path point is 20,480 points; 1,000 images per device.
  assert backend.evaluation_sizes("single_pixel", _section(), [_FakeGPU(80 * gib)] * 2) == (2000, 20)
  assert backend.evaluation_sizes("sanity", _section(), [_FakeGPU(80 * gib)]) == (100, 128)  # capped: a whole path
  # 4 GiB: 1,024 points; fewer images, so that a chunk still has MIN_CHUNK points.
  assert backend.evaluation_sizes("single_pixel", _section(), [_FakeGPU(4 * gib)]) == (256, 4)
  assert backend.evaluation_sizes("single_pixel", _section(), [_FakeGPU(1 * gib)]) == (64, 4)
  # No memory statistics: the CPU's sizes, per device.
  assert backend.evaluation_sizes("single_pixel", _section(), [_FakeGPU(None)] * 2) == (500, 4)
  # A size given: the other fills the memory around it.
  assert backend.evaluation_sizes("single_pixel", _section(64, 0), [_FakeGPU(80 * gib)]) == (64, 128)
  assert backend.evaluation_sizes("single_pixel", _section(0, 100), [_FakeGPU(80 * gib)]) == (204, 100)


# --- precision -----------------------------------------------------------------------------------


def _precisions(stablehlo: str, ops=("convolution", "dot_general")) -> set[str]:
  """The precision of every convolution and dot of a lowered program."""
  found = set()
  for line in stablehlo.splitlines():
    if any(f"stablehlo.{op}" in line for op in ops):
      found |= set(re.findall(r"\b(DEFAULT|HIGHEST|HIGH)\b", line)) or {"unset"}
  return found


def test_maps_compile_at_the_highest_precision_and_training_at_the_default(one_device_mesh):
  model = models.create_model("small_cnn")
  variables = models.init_variables(model, jax.random.key(0), (2, 32, 32, 3))
  forward = core.ModelForward(model, models.model_variables(variables))
  x, t = jnp.zeros((2, 32, 32, 3)), jnp.zeros((2,), jnp.int32)
  ig = lambda f, x, t: registry.get("integrated_gradients")(f, x, t, steps=4, baseline="zero", chunk_size=2)
  assert _precisions(jax.jit(ig).lower(forward, x, t).as_text()) == {"DEFAULT"}  # JAX's default: TF32 on a GPU
  assert _precisions(jax.jit(backend.map_precision(ig)).lower(forward, x, t).as_text()) == {"HIGHEST"}

  # Every program of the evaluations (and the Explainer) is traced through BatchRunner.run.
  seen = []
  traced = lambda f, x, t: (seen.append(jax.config.jax_default_matmul_precision), ig(f, x, t))[1]
  BatchRunner(jax.devices()[:1]).run("ig", traced, (x, t), (forward,))
  assert seen == [backend.MAP_PRECISION] == ["highest"]

  model, optimizer, steps = _tiny_steps()
  state = init_state(model, optimizer, jax.random.key(0))
  with jax.set_mesh(one_device_mesh):
    lowered = jax.jit(steps.train_step).lower(state, jnp.zeros((4, 32, 32, 3), jnp.uint8), jnp.zeros((4,), jnp.int32),
                                              jax.random.key(0))
  assert _precisions(lowered.as_text()) == {"DEFAULT"}
