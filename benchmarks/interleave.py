"""Interleaved timing: each variant in its own persistent child process, driven round-robin.

On a shared machine the load changes from minute to minute; timing one variant after another
lets the load, not the code, decide the ratio. Here every variant (a JAX program, its PyTorch
reference, the same JAX program from another checkout) is set up once in its own process
(build, compile, one warm-up call), then the driver asks each for one timed call in turn, for
several rounds, rotating who goes first, so all variants see the same machine. A variant's
peak memory is its process's max RSS (`getrusage`), which on CPU is what bounds a run.

The protocol is one JSON line each way on the child's stdin/stdout: the child answers `ready`
with its set-up facts, each `run` with the seconds of one call, and `quit` with its max RSS.
Anything else a child prints goes to its stderr.

  driver:  results = interleave.run(__file__, [Variant("jax", {...}), Variant("torch", {...})], rounds=5)
  child:   if FLAGS.worker: interleave.serve(lambda spec: (call, info), FLAGS.worker)
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from typing import Callable


@dataclasses.dataclass
class Variant:
  """One thing to time: `spec` goes to the child; `checkout` (a directory) puts another copy of
  saliency_jax first on the child's path, e.g. an earlier commit's worktree."""
  name: str
  spec: dict
  checkout: str | None = None


@dataclasses.dataclass
class Result:
  name: str
  seconds: list[float] = dataclasses.field(default_factory=list)
  info: dict = dataclasses.field(default_factory=dict)
  max_rss_mib: float = float("nan")
  error: str = ""

  @property
  def median(self) -> float:
    return statistics.median(self.seconds) if self.seconds else float("nan")


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def serve(setup: Callable[[dict], tuple[Callable[[], None], dict]], spec_json: str) -> None:
  """The child's side: `setup(spec) -> (call, info)`; `call()` must block until its work is done.
  One untimed call warms up unless `spec["warmup"]` is False (for calls of minutes, where the
  first dispatch is noise and a second one is expensive)."""
  protocol = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)  # stray prints (library warnings) must not corrupt the protocol
  sys.stdout = sys.stderr

  def say(**message):
    protocol.write(json.dumps(message) + "\n")

  t0 = time.perf_counter()
  spec = json.loads(spec_json)
  call, info = setup(spec)
  if spec.get("warmup", True):
    call()  # first dispatch, allocator, oneDNN primitive caches: not the steady state
  say(ready={**info, "setup_s": round(time.perf_counter() - t0, 2), "rss_after_setup_mib": round(_rss_mib(), 1)})
  for line in sys.stdin:
    if line.strip() != "run":
      break
    t0 = time.perf_counter()
    call()
    say(seconds=time.perf_counter() - t0)
  say(max_rss_mib=round(_rss_mib(), 1))


class _Child:

  def __init__(self, script: str, variant: Variant, python: str):
    env = dict(os.environ)
    if variant.checkout:
      env["PYTHONPATH"] = os.pathsep.join([os.path.abspath(variant.checkout), env.get("PYTHONPATH", "")]).rstrip(
          os.pathsep)
    self.proc = subprocess.Popen([python, script, f"--worker={json.dumps(variant.spec)}"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, env=env, bufsize=1)

  def ask(self, command: str | None) -> dict:
    if command is not None:
      self.proc.stdin.write(command + "\n")
      self.proc.stdin.flush()
    line = self.proc.stdout.readline()
    if not line:
      self.proc.wait()
      raise RuntimeError(f"the child exited with status {self.proc.returncode} (its stderr is above)")
    return json.loads(line)

  def close(self) -> dict:
    try:
      return self.ask("quit")
    finally:
      self.proc.stdin.close()
      self.proc.wait()


def run(script: str, variants: list[Variant], rounds: int, python: str = sys.executable, fresh: bool = False,
        log: Callable[[str], None] = lambda s: print(s, file=sys.stderr, flush=True)) -> dict[str, Result]:
  """Set up every variant (one after another), then `rounds` rounds of one timed call each,
  round-robin, the first variant rotating; then each child reports its max RSS and exits.
  `fresh`: a new child for every call instead (set up, one call, exit), so that at most one
  variant holds memory at a time (XLA keeps a program's buffers between calls): for calls of
  gigabytes. A variant whose child fails is reported with its error; the others go on."""
  results = {v.name: Result(v.name) for v in variants}
  by_name = {v.name: v for v in variants}
  children: dict[str, _Child] = {}

  def start(v: Variant) -> None:
    try:
      child = _Child(script, v, python)
      results[v.name].info = child.ask(None)["ready"]
      children[v.name] = child
      log(f"  set up {v.name}: {results[v.name].info}")
    except Exception as e:  # pylint: disable=broad-except
      results[v.name].error = str(e)
      log(f"  {v.name} failed to set up: {e}")

  def close(name: str) -> None:
    child = children.pop(name)
    try:
      results[name].max_rss_mib = max(child.close()["max_rss_mib"], results[name].max_rss_mib
                                      if results[name].max_rss_mib == results[name].max_rss_mib else 0.0)
    except Exception as e:  # pylint: disable=broad-except
      results[name].error = results[name].error or str(e)
      child.proc.kill()

  try:
    if not fresh:
      for v in variants:
        start(v)
    names = [v.name for v in variants if fresh or v.name in children]
    for r in range(rounds):
      order = names[r % len(names):] + names[:r % len(names)] if names else []
      for name in order:
        if fresh and not results[name].error:
          start(by_name[name])
        if name not in children:
          continue
        try:
          seconds = children[name].ask("run")["seconds"]
          results[name].seconds.append(seconds)
          log(f"  round {r + 1}/{rounds} {name}: {seconds:.3f} s")
        except Exception as e:  # pylint: disable=broad-except
          results[name].error = str(e)
          log(f"  {name} failed in round {r + 1}: {e}")
          children.pop(name).proc.kill()
          continue
        if fresh:
          close(name)
  finally:
    for name in list(children):
      close(name)
  return results


def serve_worker(spec_json: str, setups: dict[str, Callable[[dict], tuple[Callable[[], None], dict]]]) -> None:
  """A benchmark's child process: `serve` its variant with the setup of the variant's framework."""
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # not jax's backend probing on every child's stderr
  serve(setups[json.loads(spec_json)["framework"]], spec_json)


def machine_line(m: dict, what: str) -> str:
  """The first line of a result table: `describe_machine()`'s date, cores, CPU and load, and `what` ran."""
  return f"{m['date']}: {m['nproc']} x {m['cpu']}, load average {m['loadavg']} at the start; {what}"


def describe_machine() -> dict:
  """What a result table needs to be read: cores, CPU model, load, date."""
  model = ""
  try:
    with open("/proc/cpuinfo") as f:
      model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
  except OSError:
    pass
  load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
  return dict(nproc=os.cpu_count(), cpu=model, loadavg=[round(v, 2) for v in load],
              date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))


def fmt(value: float, digits: int = 2) -> str:
  return "-" if value != value else f"{value:.{digits}f}"  # NaN: not measured
