"""Methods by name, so a config says `method='integrated_gradients'` plus an options dict.

Adding a method is one file: write `def my_method(forward, x_BHWC, target_B, *, output='logit',
**options)`, decorate it with `@register('my_method')`, import the file in `__init__`.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping

from saliency_jax.config_checks import ConfigError, require_choice

METHODS: dict[str, Callable] = {}


def register(name: str, **defaults):
  """Register a method under `name`. `defaults` pre-set options, so one function serves
  several names (LRP rules, RectGrad and RectGrad_Mod)."""

  def wrap(fn):
    if name in METHODS:
      raise ValueError(f"attribution method {name!r} is registered twice")
    METHODS[name] = _with_defaults(fn, name, defaults) if defaults else fn
    return METHODS[name]

  return wrap


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
