"""Methods by name, so a config says `method='integrated_gradients'` plus an options dict.

Adding a method is one file: write `def my_method(forward, x_BHWC, target_B, *, output='logit',
**options)`, decorate it with `@register('my_method', needs=(...))`, import the file in `__init__`.
`needs` declares, once, what a method takes from the run beyond images and targets (`NEEDS`);
every runner (the Explainer, the single-pixel grid, the sanity studies) supplies it from there
through `supply`, and nothing else infers it from parameter names.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from saliency_jax.config_checks import ConfigError, require_choice

METHODS: dict[str, Callable] = {}
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


def register(name: str, *, needs=(), **defaults):
  """Register a method under `name`, declaring what it `needs` (keys of `NEEDS`). `defaults`
  pre-set options, so one function serves several names (LRP rules, RectGrad and RectGrad_Mod)."""
  unknown = set(needs) - set(NEEDS)
  if unknown:
    raise ValueError(f"method {name!r} declares unknown needs {sorted(unknown)}; known: {', '.join(NEEDS)}")

  def wrap(fn):
    if name in METHODS:
      raise ValueError(f"attribution method {name!r} is registered twice")
    METHODS[name] = _with_defaults(fn, name, defaults) if defaults else fn
    _NEEDS[name] = frozenset(needs)
    return METHODS[name]

  return wrap


def needs(name: str) -> frozenset[str]:
  """What method `name` declared it needs (see `NEEDS`)."""
  get(name)
  return _NEEDS[name]


def supply(name: str, options: Mapping[str, Any], *, normalization=None, key=None, chunk_size=None) -> dict:
  """`options` plus what the run provides and the method declared it needs, where the caller did
  not set it: the normalization, a random key, the chunk size of a path method."""
  options = dict(options)
  wanted = needs(name)
  for need, value in (("normalization", normalization), ("key", key), ("path", chunk_size)):
    option = "chunk_size" if need == "path" else need
    if need in wanted and value is not None:
      options.setdefault(option, value)
  return options


def _with_defaults(fn, name, defaults):
  def method(forward, x_BHWC, target_B, **options):
    return fn(forward, x_BHWC, target_B, **{**defaults, **options})

  method.__name__ = name
  method.__doc__ = fn.__doc__
  method.__wrapped__ = fn
  method.defaults = dict(defaults)
  return method


def options_of(name: str) -> list[str]:
  """The keyword options method `name` takes."""
  fn = get(name)
  fn = getattr(fn, "__wrapped__", fn)
  params = inspect.signature(fn).parameters
  return [p.name for p in params.values() if p.kind == p.KEYWORD_ONLY]


def get(name: str) -> Callable:
  require_choice("attribution.method", name, sorted(METHODS))
  return METHODS[name]


def check_options(name: str, options: Mapping[str, Any]) -> dict:
  allowed = options_of(name)
  for key in options:
    if key not in allowed:
      raise ConfigError(f"option {key!r} is not known for attribution.method={name!r}; allowed: {', '.join(allowed)}")
  return dict(options)


def from_config(method_config) -> Callable:
  """`method_config` has `name` and optional `options` (a dict or ConfigDict); returns
  `fn(forward, x, target)` with the options bound, checked against the method's signature."""
  name = method_config["name"]
  options = check_options(name, dict(method_config.get("options", None) or {}))
  fn = get(name)

  def method(forward, x_BHWC, target_B):
    return fn(forward, x_BHWC, target_B, **options)

  method.__name__ = name
  return method
