"""Methods by name, so a config says `method='integrated_gradients'` plus an options dict.

Adding a method is one file, anywhere: write `def my_method(forward, x_BHWC, target_B, *,
output='logit', **options)` and decorate it with `@register('my_method', needs=(...))`; the file
is imported by the package (inside it) or by a run's `config.imports` (outside it: `import_modules`),
and the method is then known by name to the Explainer, the single-pixel grid, the sanity studies
and the faithfulness curves (docs/extending.md). `needs` declares, once, what a method takes from
the run beyond images and targets (`NEEDS`); every runner supplies it from there through `supply`,
and nothing else infers it from parameter names.

`register` puts one boundary around every method, called by name or directly: it checks what the
caller passes (option names, `output`, the images, the targets: `core.check_targets`) once, so
method code can take them as given, and the map's shape on the way out; it binds the forward for
running (`lowering.bind`: the CPU lowering where it is on), so method code never mentions it.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import importlib
import importlib.util
import inspect
import os
import pathlib
import sys
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from saliency_jax import checks, lowering
from saliency_jax.attribution import core, display

METHODS: dict[str, Callable] = {}
# A method's revision: 1 for its definition as first registered, raised by hand whenever a change to it
# changes the maps it computes. It is part of every result row's key, so a run recomputes a method's
# cells after a change and the report leaves out rows of an older revision instead of mixing them in.
_REVISIONS: dict[str, int] = {}
# What a method can need beyond (forward, images, targets); the runners supply the first three.
NEEDS = {
    "key": "a random key (`key=`: one, or one per image)",
    "normalization": "the inputs' normalization (`normalization=`), to make named pixel baselines",
    "path": "many gradient evaluations per image (`chunk_size=` bounds their memory, not their result)",
    "model": "`ModelForward(model, variables)`, not only a function: it looks inside the network",
    "layer": "a named layer of the model (`layer=`)",
    "activations": "the network with its activation function replaced",
    "baseline": "a reference input (`baseline=`), which input invariance shifts along with the input",
}
_NEEDS: dict[str, frozenset[str]] = {}
# Each name's definition (module, qualified name, and the registration's presets, needs and revision):
# the same one run again (a notebook cell, importlib.reload) replaces it; another under a taken name is
# an error.
_ORIGINS: dict[str, tuple[str, str, str]] = {}
# The options a runner supplies, by the need that asks for them (`supply`).
SUPPLIED = {"key": "key", "normalization": "normalization", "path": "chunk_size"}


def register(name: str, *, needs=(), revision: int = 1, **defaults):
  """Register a method under `name`, declaring what it `needs` (keys of `NEEDS`) and its `revision`
  (raise it when a change alters the maps: runs then recompute the method's cells). `defaults`
  pre-set options, so one function serves several names (LRP rules, RectGrad and RectGrad_Mod)."""
  unknown = set(needs) - set(NEEDS)
  if unknown:
    raise ValueError(f"method {name!r} declares unknown needs {sorted(unknown)}; known: {', '.join(NEEDS)}")
  if isinstance(revision, bool) or not isinstance(revision, int) or revision < 1:
    raise ValueError(f"method {name!r}: revision={revision!r} is not allowed; give a whole number from 1")

  def wrap(fn):
    # A definition is its function's place and what the registration adds to it (presets, needs, revision).
    origin = (getattr(fn, "__module__", "?"), getattr(fn, "__qualname__", repr(fn)),
              repr((sorted(defaults.items()), sorted(needs), revision)))
    if name in METHODS and _ORIGINS[name] != origin:
      raise ValueError(f"attribution method {name!r} is registered twice: by {'.'.join(_ORIGINS[name][:2])} and by "
                       f"{'.'.join(origin[:2])}" + (" with other presets, needs or revision" if
                       _ORIGINS[name][:2] == origin[:2] else "") + "; give one of them another name")
    _check_signature(name, fn, needs, defaults)
    _ORIGINS[name] = origin
    _NEEDS[name] = frozenset(needs)
    _REVISIONS[name] = revision
    METHODS[name] = _boundary(name, _with_defaults(fn, name, defaults) if defaults else fn)
    return METHODS[name]

  return wrap


def _check_signature(name: str, fn: Callable, needs, defaults) -> None:
  """What `register` can tell from the function alone: it takes `output=` and the options it sets, and
  declares the needs for the options a runner supplies (a method taking `key=` without needs=('key',)
  would be given None by every runner)."""
  params = inspect.signature(fn).parameters.values()
  if any(p.kind == p.VAR_KEYWORD for p in params):
    return
  what = getattr(fn, "__name__", repr(fn))
  keywords = {p.name for p in params if p.kind == p.KEYWORD_ONLY}  # the options, as `options_of` reads them
  if "output" not in keywords:
    raise ValueError(f"method {name!r}: {what} takes no keyword-only output= option; a method explains the 'logit' "
                     "or the 'softmax' of its target: add `*, output: str = 'logit'` after (forward, x_BHWC, "
                     "target_B) and pass it on to core.scores or core.input_gradient")
  unknown = sorted(set(defaults) - keywords)
  if unknown:
    raise ValueError(f"method {name!r} presets {', '.join(unknown)}, which {what} does not take")
  for need, option in SUPPLIED.items():
    if option in keywords and need not in needs:
      raise ValueError(f"method {name!r} takes {option}= but does not declare needs=({need!r},), so no runner "
                       f"would supply it: register({name!r}, needs=({need!r}, ...))")


def _boundary(name: str, fn: Callable) -> Callable:
  """`fn` behind the checks every caller gets (option names, `output`, images, targets: one
  ValueError in the library's words) and with its forward bound for running (`lowering.bind`).
  A target array traced inside `jax.jit` cannot be checked by value: an image whose target is
  not a class gets a NaN map (`core.check_targets`)."""

  @functools.wraps(fn)
  def method(forward, x_BHWC, target_B, **options):
    check_options(name, options)
    checks.require_choice("output", options.get("output", "logit"), core.OUTPUTS)
    core.check_images(x_BHWC)
    classes = core.num_classes(lowering.plain(forward), x_BHWC)  # a shape: the forward as written traces fastest
    target_B, valid_B = core.check_targets(target_B, x_BHWC.shape[0], classes)
    maps = fn(lowering.bind(forward), x_BHWC, target_B, **options)
    if getattr(maps, "shape", None) != tuple(x_BHWC.shape):
      got = f"shape {maps.shape}" if hasattr(maps, "shape") else type(maps).__name__
      raise ValueError(f"method {name!r} returned {got}; a method returns a map shaped like its input, "
                       f"{tuple(x_BHWC.shape)} (every channel: the stages reduce channels themselves)")
    if valid_B is None:
      return maps
    return jnp.where(valid_B.reshape(-1, *[1] * (maps.ndim - 1)), maps, jnp.nan)

  return method


def import_modules(entries, field: str = "imports") -> list[str]:
  """Import every entry of `entries`, before anything is checked, so the methods its files register
  are known by name: a module name ('my_methods', 'lab.saliency') or a .py file ('my_methods.py',
  'lab/methods.py'), both found from the working directory, as Python finds a script's modules.
  A module already imported is not imported again. Errors are one ValueError naming `field`."""
  entries = (entries,) if isinstance(entries, str) else tuple(entries or ())
  # A command-line --config.imports=a,b arrives as ('a,b',).
  entries = [e.strip() for entry in entries for e in str(entry).split(",") if e.strip()]
  if os.getcwd() not in sys.path and "" not in sys.path:
    sys.path.insert(0, os.getcwd())
  imported = []
  for entry in entries:
    try:
      if entry.endswith(".py") or os.sep in entry:
        path = pathlib.Path(entry).expanduser().resolve()
        if not path.is_file():
          raise ValueError(f"{field} entry {entry!r}: no such file (paths are read from the working directory, "
                            f"{os.getcwd()})")
        name = path.stem
        module = sys.modules.get(name)
        if module is None or pathlib.Path(getattr(module, "__file__", "") or "").resolve() != path:
          spec = importlib.util.spec_from_file_location(name, path)
          module = importlib.util.module_from_spec(spec)
          sys.modules[name] = module
          try:
            spec.loader.exec_module(module)
          except BaseException:
            del sys.modules[name]
            raise
      else:
        importlib.import_module(entry)
    except ModuleNotFoundError as e:
      raise ValueError(f"{field} entry {entry!r} cannot be imported ({e}); give a module name found from the "
                        f"working directory ({os.getcwd()}) or a .py file") from None
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{field} entry {entry!r} failed to import: {type(e).__name__}: {e}") from None
    imported.append(entry)
  return imported


def needs(name: str) -> frozenset[str]:
  """What method `name` declared it needs (see `NEEDS`)."""
  get(name)
  return _NEEDS[name]


def revision(name: str) -> int | None:
  """The revision method `name` was registered with; None for a name not registered in this process
  (a row about it cannot be judged, and is kept)."""
  return _REVISIONS.get(name)


def supply(name: str, options: Mapping[str, Any], *, normalization=None, key=None, chunk_size=None) -> dict:
  """`options` plus what the run provides and the method declared it needs, where the caller did
  not set it: the normalization, a random key, the chunk size of a path method."""
  options = dict(options)
  wanted = needs(name)
  given = {"normalization": normalization, "key": key, "path": chunk_size}
  for need, option in SUPPLIED.items():
    if need in wanted and given[need] is not None:
      options.setdefault(option, given[need])
  return options


def _with_defaults(fn, name, defaults):
  def method(forward, x_BHWC, target_B, **options):
    return fn(forward, x_BHWC, target_B, **{**defaults, **options})

  method.__name__ = name
  method.__doc__ = fn.__doc__
  method.__wrapped__ = fn
  method.defaults = dict(defaults)
  return method


def options_of(name: str) -> list[str] | None:
  """The keyword options method `name` takes (None: any, it takes **options)."""
  params = inspect.signature(inspect.unwrap(get(name))).parameters.values()
  if any(p.kind == p.VAR_KEYWORD for p in params):
    return None
  return [p.name for p in params if p.kind == p.KEYWORD_ONLY]


def get(name: str) -> Callable:
  checks.require_choice("attribution.method", name, sorted(METHODS))
  return METHODS[name]


def check_options(name: str, options: Mapping[str, Any]) -> dict:
  allowed = options_of(name)
  for key in options:
    if allowed is not None and key not in allowed:
      raise ValueError(f"option {key!r} is not known for attribution.method={name!r}; allowed: {', '.join(allowed)}")
  return dict(options)


def from_config(method_config) -> Callable:
  """`fn(forward, x, target)` with the options bound and checked: `method_config` is a spec string,
  'name(option=value, ...)' (see `parse`), or a mapping with `name` and optional `options`."""
  if isinstance(method_config, str):
    spec = parse(method_config)
    name, options = spec.name, dict(spec.options)
  else:
    name = method_config["name"]
    options = check_options(name, dict(method_config.get("options", None) or {}))
  fn = get(name)

  def method(forward, x_BHWC, target_B):
    return fn(forward, x_BHWC, target_B, **options)

  method.__name__ = name
  return method


# Options that change memory or speed, never the map: not part of a cell's identity.
EXECUTION_OPTIONS = ("chunk_size",)


@dataclasses.dataclass(frozen=True)
class MethodSpec:
  name: str
  options: tuple[tuple[str, Any], ...] = ()
  reduction: str = "mean"

  @property
  def options_text(self) -> str:
    """The options as written in results.csv: sorted `key=value`, without execution options."""
    return ", ".join(f"{k}={v!r}" for k, v in self.options if k not in EXECUTION_OPTIONS)

  @property
  def revision(self) -> int:
    return _REVISIONS[self.name]

  @property
  def label(self) -> str:
    return f"{self.name}({self.options_text})" if self.options_text else self.name


def _literal(node):
  """A Python literal, or `inf` (LRP-gamma's positive-weight limit, `gamma=inf`)."""
  if isinstance(node, ast.Name) and node.id == "inf":
    return float("inf")
  return ast.literal_eval(node)


def parse(spec: str, field: str = "method") -> MethodSpec:
  """'name' or 'name(option=literal, ...)' -> MethodSpec: the one grammar of a method everywhere
  (configs, the command line, the sanity studies, `from_config`), checked against the registry;
  `inf` is a literal, `reduce=` the channel reduction. Errors name `field`."""
  try:
    node = ast.parse(spec.strip(), mode="eval").body
  except SyntaxError:
    node = None
  if isinstance(node, ast.Name):
    name, options = node.id, {}
  elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
    try:
      name, options = node.func.id, {kw.arg: _literal(kw.value) for kw in node.keywords}
    except ValueError as e:
      raise ValueError(f"{field} entry {spec!r}: option values must be literals ({e})") from None
  else:
    raise ValueError(f"{field} entry {spec!r} is not 'name' or 'name(option=value, ...)', "
                      "e.g. \"integrated_gradients(baseline='black', steps=100)\"")
  checks.require_choice(field, name, sorted(METHODS))
  reduction = options.pop("reduce", "mean")
  checks.require_choice(f"{field} ({name}) reduce", reduction, display.REDUCTIONS)
  try:
    check_options(name, options)
  except ValueError as e:
    raise ValueError(f"{field} entry {spec!r}: {e}") from None
  return MethodSpec(name, tuple(sorted(options.items())), reduction)


def parse_all(specs, field: str) -> list[MethodSpec]:
  """Every entry of a config's method list (`field` names it in errors), none twice."""
  if isinstance(specs, str) or not specs:
    raise ValueError(f"{field} must be a non-empty tuple of method specs, e.g. (\"gradient\", "
                     f"\"integrated_gradients(steps=32)\"); got {specs!r}")
  methods = [parse(m, field) for m in specs]
  labels = [m.label + m.reduction for m in methods]
  if len(set(labels)) != len(labels):
    raise ValueError(f"{field} names the same method twice: {list(specs)}")
  return methods


def check_builds(spec: MethodSpec, forward, x_BHWC, target_B, *, output: str = "logit", normalization=None,
                 field: str = "method") -> None:
  """Trace `spec` once on abstract inputs (`jax.ShapeDtypeStruct`s; nothing is computed), so an
  option value the method rejects, a layer the model lacks or a clash with what the run supplies
  is found before any work, as a ValueError naming `field` and the entry."""
  fn = get(spec.name)
  options = supply(spec.name, dict(spec.options), normalization=normalization, key=jax.random.key(0))
  try:
    jax.eval_shape(lambda f, x, t: fn(f, x, t, output=output, **options), forward, x_BHWC, target_B)
  except (ValueError, TypeError) as e:
    raise ValueError(f"{field} entry {spec.label!r} does not build for this model: {e}") from None
