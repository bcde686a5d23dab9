"""The binary's config file: loaded by absl and ml_collections (`--config=FILE[:ARG]` and its
`--config.field=value` overrides), with every way that can fail ended as one line and exit code 2
before any work: a setting that does not exist (configs/default.py declares and locks every one; a
config that sets some under `config.unlocked()` is compared with it), a value of another type, a
missing file, a `get_config` that raises, a flag value that does not parse. Each line names the
file's line or the flag, and for a typo the nearest setting that exists."""

from __future__ import annotations

import os
import pathlib
import re
import sys
import traceback

from absl import flags
from ml_collections import config_flags


DEFAULT = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"
# This file and the binary's: their frames are not the user's config.
_OWN = {pathlib.Path(__file__).resolve(), pathlib.Path(__file__).resolve().with_name("main.py")}


def declared():
  """configs/default.py's config (None outside a checkout of the repository)."""
  if not DEFAULT.exists():
    return None
  import importlib.util  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location("_default_config", DEFAULT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def undeclared(config, declared, prefix="") -> list[str]:
  """Fields of `config` that `declared` lacks: set under `config.unlocked()`, which the lock cannot see."""
  out = []
  for key, value in config.items():
    if key not in declared:
      out.append(f"{prefix}{key}")
    elif hasattr(value, "items") and hasattr(declared[key], "items"):
      out += undeclared(value, declared[key], f"{prefix}{key}.")
  return out


def parse_flags(argv, config) -> list[str]:
  """absl's flag parsing (the binary's `flags_parser`), where ml_collections loads the config file
  and applies its overrides; what fails ends the process with one line (the module docstring).
  `config`: the binary's `config_flags.DEFINE_config_file` holder. Returns what absl leaves over."""
  try:
    rest = flags.FLAGS(argv)
    config.value.keys()  # a file that failed to load raises here (ml_collections defers it), not inside main
    defaults = declared()
    extra = undeclared(config.value, defaults) if defaults is not None else []
    if not extra:
      return rest
    message = (f"--{config.name}={config_flags.get_config_filename(flags.FLAGS[config.name])} sets {', '.join(extra)}, which "
               "configs/default.py does not declare (set under config.unlocked()?); a typo, or a setting to add there")
  except flags.Error as e:  # a flag's value that does not parse, or get_config's own error
    text = str(e)
    if "Traceback (most recent call last)" in text:  # ml_collections quotes get_config's traceback whole
      lines = [line.strip() for line in text.splitlines() if line.strip()]
      frames = [m for m in re.finditer(r'File "([^"]+)", line (\d+), in \S+\n\s*(.*)', text)
                if f"{os.sep}site-packages{os.sep}" not in m.group(1)]
      where = (_at(frames[-1].group(1), frames[-1].group(2), frames[-1].group(3)) if frames
               else text.split(": Error whilst parsing", 1)[0])
      text = f"{where}: {lines[-1]}"
    message = text
  except Exception as e:  # pylint: disable=broad-except
    message = _load_error(e, argv, config.name)
  print(f"error: {' '.join(message.split())}", file=sys.stderr)
  sys.exit(2)


def _at(filename: str, lineno, line: str | None) -> str:
  """'file, line N (code)': the file relative to the working directory when inside it; the code left
  out when it is the `raise` whose message follows anyway."""
  path = pathlib.Path(filename).resolve()
  shown = path.relative_to(pathlib.Path.cwd()) if path.is_relative_to(pathlib.Path.cwd()) else path
  code = (line or "").strip()
  return f"{shown}, line {lineno}" + (f" ({code})" if code and not code.startswith("raise ") else "")


def _load_error(e: Exception, argv, name: str) -> str:
  try:
    config = config_flags.get_config_filename(flags.FLAGS[name])
  except config_flags.config_flags.UnparsedFlagError:  # it failed inside the flag's own parsing: read the command line
    given = [b.split("=", 1)[1] if b.startswith(f"--{name}=") else c
             for b, c in zip(argv, [*argv[1:], ""]) if b.startswith(f"--{name}=") or b == f"--{name}"]
    config = given[-1].split(":")[0] if given else "the config file"  # the last one wins, as in absl
  if not pathlib.Path(config).is_file():
    return f"--{name}={config}: no such file (read from the working directory, {os.getcwd()})"
  # The innermost line of code outside the libraries: the config file's, or a config it imports.
  ours = [f for f in traceback.extract_tb(e.__traceback__)
          if f"{os.sep}site-packages{os.sep}" not in f.filename and not f.filename.startswith("<")
          and pathlib.Path(f.filename).resolve() not in _OWN]
  where = _at(ours[-1].filename, ours[-1].lineno, ours[-1].line) if ours else None
  # A ConfigDict raises KeyError(message), or AttributeError(KeyError(message)), for a field it lacks.
  inner = e if isinstance(e, KeyError) else e.args[0] if e.args and isinstance(e.args[0], KeyError) else None
  text = str(inner.args[0] if inner is not None and inner.args else e)
  missing = inner is not None and re.match(r"""Key "(\w+)" does not exist|'(\w+)'""", text)
  if missing:
    key = missing.group(1) or missing.group(2)
    guess = re.search(r'Did you mean "(\w+)"', text)
    # Only a field the file did not mention can come from a --config. flag (applied after the file).
    flag = None if where else next((a.split("=", 1)[0] for a in argv if a.startswith(f"--{name}.")
                                    and re.search(rf"\.{key}(\.|$)", a.split("=", 1)[0])), None)
    return (f"{where or flag or config}: {key!r} is not a setting" + (f"; did you mean {guess.group(1)!r}?" if guess
                                                                        else "")
            + " (configs/default.py declares every setting, and a new one is added there: python -m "
              "saliency_jax.main --help lists them)")
  return f"--{name}={config} failed to load: {type(e).__name__}: {text}" + (f" ({where})" if where else "")
