"""Argument checks: one clear line naming the argument and what is allowed.

Library functions (attribution, models) raise `error=ValueError`, as any Python library would;
`config_checks` uses the same checks to raise `ConfigError` at the boundary, the config and the
command line, where `main` prints it as one line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def require_choice(field: str, value: Any, allowed: Iterable[Any], error: type[Exception] = ValueError) -> None:
  allowed = tuple(allowed)
  if value not in allowed:
    choices = ", ".join(repr(a) for a in allowed)
    raise error(f"{field}={value!r} is not allowed; choose one of: {choices}")


def require_positive(field: str, value: Any, *, integer: bool = False, error: type[Exception] = ValueError) -> None:
  kind = "a positive integer" if integer else "a positive number"
  ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
  if integer:
    ok = ok and float(value).is_integer()
  if not ok:
    raise error(f"{field}={value!r} is not allowed; it must be {kind}")


def require_non_negative(field: str, value: Any, error: type[Exception] = ValueError) -> None:
  if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
    raise error(f"{field}={value!r} is not allowed; it must be >= 0")


def require_subset(field: str, values: Iterable[Any], allowed: Iterable[Any], error: type[Exception] = ValueError) -> None:
  allowed = tuple(allowed)
  values = tuple(values)
  if not values:
    raise error(f"{field} is empty; give at least one of: {', '.join(map(repr, allowed))}")
  for v in values:
    if v not in allowed:
      choices = ", ".join(repr(a) for a in allowed)
      raise error(f"{field} contains {v!r}, which is not allowed; choose from: {choices}")
