"""Several hosts: how a run over several JAX processes starts."""

import jax
import pytest

from saliency_jax.config_checks import ConfigError
from saliency_jax.training import parallel


def test_the_multi_process_variables_are_passed_to_jax_distributed(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, "is_initialized", lambda: False)
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
  for name in ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "localhost:1234")
  monkeypatch.setenv("JAX_NUM_PROCESSES", "2")
  monkeypatch.setenv("JAX_PROCESS_ID", "1")
  parallel.maybe_initialize_distributed()
  assert calls == [{"coordinator_address": "localhost:1234", "num_processes": 2, "process_id": 1}]
  monkeypatch.setenv("JAX_NUM_PROCESSES", "two")
  with pytest.raises(ConfigError, match="JAX_NUM_PROCESSES='two'"):
    parallel.maybe_initialize_distributed()
  for name in ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(name)
  calls.clear()
  parallel.maybe_initialize_distributed()  # a single process: nothing to initialise
  assert calls == []
