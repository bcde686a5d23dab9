"""User-facing validation: one clear line naming the setting and what is allowed.

Every check raises `ConfigError`; `main` prints its message and exits non-zero
without a traceback, so a typo in a sweep costs seconds rather than a stack dump.
"""

from __future__ import annotations

import functools

from saliency_jax import checks


class ConfigError(ValueError):
  """A setting a user can fix; the message names the field and what is allowed."""


# The library's checks, raising ConfigError: for settings a user gives in a config or a flag.
require_choice = functools.partial(checks.require_choice, error=ConfigError)
require_positive = functools.partial(checks.require_positive, error=ConfigError)
require_non_negative = functools.partial(checks.require_non_negative, error=ConfigError)
require_subset = functools.partial(checks.require_subset, error=ConfigError)
