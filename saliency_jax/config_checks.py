"""User-facing validation: one clear line naming the setting and what is allowed.

Every check raises `ConfigError`; `main` prints its message and exits non-zero
without a traceback, so a typo in a sweep costs seconds rather than a stack dump.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
  """A setting a user can fix; the message names the field and what is allowed."""


def require_choice(field: str, value: Any, allowed: Iterable[Any]) -> None:
  allowed = tuple(allowed)
  if value not in allowed:
    choices = ", ".join(repr(a) for a in allowed)
    raise ConfigError(f"{field}={value!r} is not allowed; choose one of: {choices}")


def require_positive(field: str, value: Any, *, integer: bool = False) -> None:
  kind = "a positive integer" if integer else "a positive number"
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
  if integer:
    ok = ok and float(value).is_integer()
  if not ok:
    raise ConfigError(f"{field}={value!r} is not allowed; it must be {kind}")


def require_non_negative(field: str, value: Any) -> None:
  if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
    raise ConfigError(f"{field}={value!r} is not allowed; it must be >= 0")


def require_subset(field: str, values: Iterable[Any], allowed: Iterable[Any]) -> None:
  allowed = tuple(allowed)
  values = tuple(values)
  if not values:
    raise ConfigError(f"{field} is empty; give at least one of: {', '.join(map(repr, allowed))}")
  for v in values:
    if v not in allowed:
      choices = ", ".join(repr(a) for a in allowed)
      raise ConfigError(f"{field} contains {v!r}, which is not allowed; choose from: {choices}")
