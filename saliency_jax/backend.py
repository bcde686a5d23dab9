"""The machine a run uses, decided in one place (docs/gpu.md).

- `start(config)`, at the top of the binary: logs the backend, its device kind and count, and
  refuses a CPU backend beside a visible NVIDIA GPU (a failed CUDA install would otherwise train
  at CPU speed for days); turns on JAX's persistent compilation cache (`config.compilation_cache`).
- `map_precision(fn)`: attribution maps and evaluation forwards compute float32 convolutions
  and matmuls at full float32 precision on every backend (`MAP_PRECISION`); training keeps JAX's
  default (TF32 on NVIDIA GPUs since Ampere).
- `evaluation_sizes(...)`: an evaluation stage's images per compiled call and IG path points per
  chunk; 0 in a field sizes it for the device (the CPU's measured values on CPU).
"""

from __future__ import annotations

import collections
import functools
import os
import pathlib
import shutil
import subprocess
from typing import Callable, Sequence

import jax
from absl import logging

from saliency_jax.checks import require_non_negative
from saliency_jax.data.sources import default_cache_dir
from saliency_jax.training import parallel

# --- the backend -------------------------------------------------------------------------------

_NVIDIA_DEVICE = "/dev/nvidia0"  # present wherever the NVIDIA driver is loaded with a GPU


def visible_nvidia_gpus() -> int:
  """NVIDIA GPUs a CUDA program started here would see: those `nvidia-smi -L` lists (at least one
  where /dev/nvidia0 exists), none where CUDA_VISIBLE_DEVICES hides them ('' or '-1')."""
  hidden = os.environ.get("CUDA_VISIBLE_DEVICES")
  if hidden is not None and hidden.strip() in ("", "-1"):
    return 0
  listed = 0
  smi = shutil.which("nvidia-smi")
  if smi:
    try:
      out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False).stdout
      listed = sum(line.startswith("GPU ") for line in out.splitlines())
    except (OSError, subprocess.SubprocessError):
      pass
  return max(listed, int(os.path.exists(_NVIDIA_DEVICE)))


def describe_devices(devices: Sequence[jax.Device] | None = None) -> str:
  """e.g. 'gpu: 1 device (NVIDIA H100 80GB HBM3), 1 process'."""
  devices = list(devices) if devices is not None else jax.devices()
  kinds = ", ".join(f"{n} x {kind}" if n > 1 else kind
                    for kind, n in collections.Counter(d.device_kind for d in devices).items())
  processes = jax.process_count()
  return (f"{devices[0].platform}: {len(devices)} device{'s' * (len(devices) > 1)} ({kinds}), "
          f"{processes} process{'es' * (processes > 1)}")


def check_backend(backend: str, gpus: int, platforms: str | None) -> None:
  """A CPU backend while NVIDIA GPUs are visible is refused unless the user asked for the CPU
  (`JAX_PLATFORMS=cpu`, JAX's own setting): JAX falls back to the CPU with one warning when its
  CUDA plugin is missing or fails to load, and a paper run would go on at CPU speed."""
  if backend != "cpu" or not gpus or (platforms or "").strip().lower() == "cpu":
    return
  raise ValueError(f"{gpus} NVIDIA GPU{'s are' if gpus > 1 else ' is'} visible (nvidia-smi) but JAX runs on the CPU: "
                    "this jax has no working CUDA backend (install it with pip install -e '.[cuda12]' and check "
                    "python -c 'import jax; print(jax.devices())'); to run on the CPU anyway, set JAX_PLATFORMS=cpu")


def start(config) -> None:
  """What the binary does before any work: the backend checked and logged, the compilation cache
  on (unless `config.compilation_cache='off'`)."""
  check_backend(jax.default_backend(), visible_nvidia_gpus(), jax.config.jax_platforms)
  logging.info("JAX %s on %s", jax.__version__, describe_devices())
  folder = use_compilation_cache(config.get("compilation_cache", ""))
  logging.info("compilation cache: %s", folder or "off")


# --- the compilation cache ---------------------------------------------------------------------


def default_compilation_cache() -> pathlib.Path:
  """Beside the folder source's decode cache: $XDG_CACHE_HOME/saliency_jax/jax."""
  return default_cache_dir() / "jax"


def compilation_cache_folder(setting: str, configured: str | None) -> pathlib.Path | None:
  """The folder `config.compilation_cache` names: `setting`; if empty, JAX's own setting
  (`configured`, from JAX_COMPILATION_CACHE_DIR) when there is one, else
  `default_compilation_cache()`; None for 'off'."""
  setting = (setting or "").strip()
  if setting.lower() == "off":
    return None
  return pathlib.Path(setting or configured or default_compilation_cache()).expanduser()


def use_compilation_cache(setting: str) -> str:
  """JAX's persistent compilation cache in the folder `compilation_cache_folder` names; returns
  it ('' when off).

  A program is read back when its HLO, compile options, devices and JAX version match, so a
  second seed, a resumed run or the other runs of a sweep compile nothing the first compiled.
  Every program is kept, however fast it compiled (JAX's default keeps those over 1 s): a run
  compiles a few dozen, and on a GPU even a small one takes tenths of a second."""
  folder = compilation_cache_folder(setting, jax.config.jax_compilation_cache_dir)
  if folder is None:
    jax.config.update("jax_enable_compilation_cache", False)
    return ""
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise ValueError(f"compilation_cache={setting!r}: cannot create {folder} ({e.strerror}); give a writable "
                      "folder, or 'off'") from None
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", str(folder))
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  _COMPILES.listen()
  return str(folder)


class _Compiles:
  """Programs compiled and read from the cache in this process (JAX's monitoring events)."""

  def __init__(self):
    self.requests, self.hits, self.seconds, self._listening = 0, 0, 0.0, False

  def listen(self) -> None:
    if self._listening:
      return
    self._listening = True
    jax.monitoring.register_event_listener(self._event)
    jax.monitoring.register_event_duration_secs_listener(self._duration)

  def _event(self, event: str, **_) -> None:
    if event == "/jax/compilation_cache/cache_hits":
      self.hits += 1

  def _duration(self, event: str, seconds: float, **_) -> None:
    if event == "/jax/core/compile/backend_compile_duration":  # a compile or a cache read
      self.requests += 1
      self.seconds += seconds

  def summary(self) -> str:
    return (f"{self.requests - self.hits} programs compiled, {self.hits} read from the compilation cache "
            f"({self.seconds:.1f} s in all)")


_COMPILES = _Compiles()


def compile_summary() -> str:
  """e.g. '3 programs compiled, 21 read from the compilation cache (4.2 s in all)'."""
  return _COMPILES.summary()


# --- precision ---------------------------------------------------------------------------------

# Attribution maps at full float32 on every backend: on NVIDIA GPUs JAX's default runs float32
# convolutions and matmuls in TF32 (10-bit mantissa), and maps would differ from the CPU's by far
# more than float32 rounding, enough to flip a near tie of the pointing game. Training keeps JAX's
# default: SGD does not need the last bits, and TF32 is the fast path there (docs/gpu.md).
MAP_PRECISION = "highest"


def map_precision(fn: Callable) -> Callable:
  """`fn` traced under `MAP_PRECISION` (`jax.default_matmul_precision`), so every convolution and
  matmul of the program it compiles to asks for it; jit the result."""

  @functools.wraps(fn)  # the program keeps fn's name in logs and profiles
  def traced(*args, **kwargs):
    with jax.default_matmul_precision(MAP_PRECISION):
      return fn(*args, **kwargs)

  return traced


# --- evaluation sizes --------------------------------------------------------------------------

# (images per compiled call, IG path points per chunk) on the CPU, measured there
# (docs/performance.md): the whole host's, however many CPU devices JAX emulates.
CPU_SIZES = {"single_pixel": (250, 4), "sanity": (50, 8), "faithfulness": (50, 8)}
# On an accelerator, images per device per call (the sanity studies' and faithfulness' default
# image counts, 100 and 500, then take a call or a few) ...
ACCELERATOR_BATCH = {"single_pixel": 1000, "sanity": 100, "faithfulness": 100}
# ... and as many path points per chunk as fit in a share of the device's memory, at this much per
# image and path point: XLA's temporaries of a compiled IG program on CPU, measured at 0.9 MiB
# (resnet18) and 1.35 MiB (vgg16) per image-point, rounded up for GPU workspaces (docs/gpu.md).
BYTES_PER_IMAGE_POINT = 2 * 2**20
MEMORY_SHARE = 0.5  # of the device's bytes_limit: the rest for the model, XLA's workspace, fragmentation
MIN_CHUNK, MAX_CHUNK = 4, 128  # fewer points per chunk leaves a GPU idle; more is the whole path anyway


def _device_bytes(device: jax.Device) -> int:
  """What JAX may allocate on `device` (its preallocated pool on a GPU); 0 where it does not say."""
  try:
    stats = device.memory_stats()
  except (NotImplementedError, RuntimeError):  # a backend without memory statistics
    stats = None
  return int((stats or {}).get("bytes_limit", 0))


def memory_summary() -> str:
  """The most device memory this process has held at once, where the backend says (not the CPU):
  what `BYTES_PER_IMAGE_POINT` can be checked against."""
  peaks = []
  for device in jax.local_devices():
    try:
      stats = device.memory_stats() or {}
    except (NotImplementedError, RuntimeError):
      stats = {}
    if "peak_bytes_in_use" in stats and stats.get("bytes_limit"):
      peaks.append((stats["peak_bytes_in_use"], stats["bytes_limit"]))
  if not peaks:
    return ""
  peak, limit = max(peaks)
  return f"device memory: peak {peak / 2**30:.1f} GiB of {limit / 2**30:.1f} GiB"


def evaluation_sizes(stage: str, section, devices: Sequence[jax.Device] | None = None) -> tuple[int, int]:
  """(images per compiled call, IG path points per chunk) for the evaluation stage `stage`
  ('single_pixel', 'sanity' or 'faithfulness') from its config section's `batch_size` and
  `chunk_size`: a positive value as given (images split over `devices`, default all of them);
  0: automatic. On CPU that is the measured `CPU_SIZES`; on an accelerator the images and path
  points that fit together in `MEMORY_SHARE` of a device's memory: `ACCELERATOR_BATCH` images per
  device (fewer where not even `MIN_CHUNK` points, or the chunk given, would fit) and as many
  points as then fit. Every process takes process 0's sizes."""
  batch, chunk = int(section.batch_size), int(section.chunk_size)
  require_non_negative(f"{stage}.batch_size", batch)
  require_non_negative(f"{stage}.chunk_size", chunk)
  if batch and chunk:
    return batch, chunk
  devices = list(devices) if devices is not None else jax.devices()
  cpu_batch, cpu_chunk = CPU_SIZES[stage]
  local = [d for d in devices if d.process_index == jax.process_index()] or jax.local_devices()
  memory = _device_bytes(local[0]) if local[0].platform != "cpu" else 0
  if not memory:  # the CPU, or an accelerator that does not say
    auto_batch, auto_chunk = cpu_batch * (len(devices) if local[0].platform != "cpu" else 1), cpu_chunk
  else:
    points = int(MEMORY_SHARE * memory) // BYTES_PER_IMAGE_POINT  # images x path points at once, per device
    per_device = (-(-batch // len(devices)) if batch
                  else max(1, min(ACCELERATOR_BATCH[stage], points // (chunk or MIN_CHUNK))))
    auto_batch, auto_chunk = per_device * len(devices), max(1, min(points // per_device, MAX_CHUNK))
  batch, chunk = parallel.agree(batch or auto_batch), parallel.agree(chunk or auto_chunk)
  logging.info("%s: %d images per call over %d device(s), %d IG path points per chunk%s", stage, batch,
               len(devices), chunk, f" (sized for {memory / 2**30:.0f} GiB per device)" if memory else "")
  return batch, chunk
