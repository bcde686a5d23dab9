"""The binary: `python -m saliency_jax.main --config=configs/resnet.py --workdir=DIR`.

Trains, then runs the single-pixel grid, the sanity studies of `sanity.studies` and, when
`faithfulness.enabled`, the faithfulness curves (`saliency_jax.pipeline`); add `--config.train.enabled=False` to evaluate a trained workdir,
`--config.single_pixel.enabled=False` to only train; `--config=configs/sanity.py:resnet` runs only
the sanity checks. Any config field can be overridden, e.g. `--config.train.epochs=5`; your own attribution
methods join every stage through `--config.imports=my_methods` (docs/extending.md). What a user can fix (a
setting, a file, a damaged checkpoint, a full disk) ends with one line naming it and exit code 2; a diverged run
ends with exit code 3; Ctrl-C with 130.
"""

import errno
import logging as pylogging
import os
import pathlib
import re
import sys
import textwrap
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

from saliency_jax.config_checks import ConfigError

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where checkpoints, metrics and results go.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet(record: pylogging.LogRecord) -> bool:
  """orbax logs every checkpoint step at INFO: keep its warnings and errors only, except a full
  disk's, which the run reports in one line (`checkpoint.CheckpointError`) after orbax's threads
  have each logged it with a traceback. JAX says at INFO that it found no TPU on every machine
  without one: noise for a CPU or GPU user."""
  from_orbax = f"{os.sep}orbax{os.sep}" in record.pathname
  if from_orbax and "No space left on device" in f"{record.getMessage()} {record.exc_info and record.exc_info[1]}":
    return False
  if record.levelno >= pylogging.WARNING:
    return True
  if from_orbax:
    return False
  return not (record.pathname.endswith("xla_bridge.py") and "Unable to initialize backend" in record.getMessage())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_quiet)
  # Imported here so `--help` and flag errors come back before JAX starts.
  from saliency_jax import backend, pipeline  # pylint: disable=g-import-not-at-top
  from saliency_jax.training import checkpoint, parallel, train  # pylint: disable=g-import-not-at-top

  try:
    with pipeline.user_errors():
      parallel.maybe_initialize_distributed()
      backend.start(_CONFIG.value)  # the devices logged and checked, the compilation cache on
    pipeline.run(_CONFIG.value, _WORKDIR.value)
    logging.info("; ".join(filter(None, (backend.compile_summary(), backend.memory_summary()))))
  except (ConfigError, checkpoint.CheckpointError) as e:
    logging.flush()
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except train.TrainingDiverged as e:
    logging.flush()
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  except OSError as e:
    if e.errno != errno.ENOSPC:
      raise
    logging.flush()
    print(f"error: no space left on the device of {e.filename or _WORKDIR.value}; free space there and rerun the "
          "same command (finished epochs, grid cells and sanity methods are kept)", file=sys.stderr)
    sys.exit(2)
  except KeyboardInterrupt:
    logging.flush()
    print(f"interrupted: {_resume_hint(pathlib.Path(_WORKDIR.value))}", file=sys.stderr)
    sys.exit(130)


def _parse_flags(argv):
  """absl's flag parsing, where ml_collections loads the config file and applies the `--config.`
  overrides: a field that does not exist (a typo, in the file or on the command line: configs/default.py
  declares every setting and locks them), a missing file or a file whose code fails ends with one
  line naming the file's line or the flag, and exit code 2, instead of a traceback."""
  try:
    rest = flags.FLAGS(argv)
    _CONFIG.value.keys()  # a file that failed to load raises here (ml_collections defers it), not inside main
    declared = _declared()
    extra = _undeclared(_CONFIG.value, declared) if declared is not None else []
    if not extra:
      return rest
    message = (f"--config={config_flags.get_config_filename(flags.FLAGS['config'])} sets {', '.join(extra)}, which "
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
    message = _config_load_error(e, argv)
  print(f"error: {' '.join(message.split())}", file=sys.stderr)
  sys.exit(2)


def _at(filename: str, lineno, line: str | None) -> str:
  """'file, line N (code)': the file relative to the working directory when inside it; the code left
  out when it is the `raise` whose message follows anyway."""
  path = pathlib.Path(filename).resolve()
  shown = path.relative_to(pathlib.Path.cwd()) if path.is_relative_to(pathlib.Path.cwd()) else path
  code = (line or "").strip()
  return f"{shown}, line {lineno}" + (f" ({code})" if code and not code.startswith("raise ") else "")


def _config_load_error(e: Exception, argv) -> str:
  try:
    config = config_flags.get_config_filename(flags.FLAGS["config"])
  except config_flags.config_flags.UnparsedFlagError:  # it failed inside the flag's own parsing: read the command line
    given = [b.split("=", 1)[1] if b.startswith("--config=") else c
             for b, c in zip(argv, [*argv[1:], ""]) if b.startswith("--config=") or b == "--config"]
    config = given[-1].split(":")[0] if given else "the config file"  # the last one wins, as in absl
  if not pathlib.Path(config).is_file():
    return f"--config={config}: no such file (read from the working directory, {os.getcwd()})"
  # The innermost line of code outside the libraries: the config file's, or a config it imports.
  ours = [f for f in traceback.extract_tb(e.__traceback__)
          if f"{os.sep}site-packages{os.sep}" not in f.filename and not f.filename.startswith("<")
          and pathlib.Path(f.filename).resolve() != pathlib.Path(__file__).resolve()]
  where = _at(ours[-1].filename, ours[-1].lineno, ours[-1].line) if ours else None
  # A ConfigDict raises KeyError(message), or AttributeError(KeyError(message)), for a field it lacks.
  inner = e if isinstance(e, KeyError) else e.args[0] if e.args and isinstance(e.args[0], KeyError) else None
  text = str(inner.args[0] if inner is not None and inner.args else e)
  missing = inner is not None and re.match(r"""Key "(\w+)" does not exist|'(\w+)'""", text)
  if missing:
    key = missing.group(1) or missing.group(2)
    guess = re.search(r'Did you mean "(\w+)"', text)
    # Only a field the file did not mention can come from a --config. flag (applied after the file).
    flag = None if where else next((a.split("=", 1)[0] for a in argv if a.startswith("--config.")
                                    and re.search(rf"\.{key}(\.|$)", a.split("=", 1)[0])), None)
    return (f"{where or flag or config}: {key!r} is not a setting" + (f"; did you mean {guess.group(1)!r}?" if guess
                                                                        else "")
            + " (configs/default.py declares every setting, and a new one is added there: python -m "
              "saliency_jax.main --help lists them)")
  return f"--config={config} failed to load: {type(e).__name__}: {text}" + (f" ({where})" if where else "")


def _resume_hint(workdir: pathlib.Path) -> str:
  """What a rerun of the same command will start from: the newest checkpoint in `workdir`."""
  epochs = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
  if not epochs:
    return f"no checkpoint in {workdir} yet; rerun the same command to train from the start"
  return (f"the newest checkpoint in {workdir} is after epoch {max(epochs)}; rerun the same command to resume "
          "from it (finished grid cells and sanity methods are kept)")


_DEFAULT = pathlib.Path(__file__).resolve().parents[1] / "configs" / "default.py"


def _declared():
  """configs/default.py's config (None outside a checkout of the repository)."""
  if not _DEFAULT.exists():
    return None
  import importlib.util  # pylint: disable=g-import-not-at-top

  spec = importlib.util.spec_from_file_location("_default_config", _DEFAULT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _undeclared(config, declared, prefix="") -> list[str]:
  """Fields of `config` that `declared` lacks: set under `config.unlocked()`, which the lock cannot see."""
  out = []
  for key, value in config.items():
    if key not in declared:
      out.append(f"{prefix}{key}")
    elif hasattr(value, "items") and hasattr(declared[key], "items"):
      out += _undeclared(value, declared[key], f"{prefix}{key}.")
  return out


def config_help() -> str:
  """Every config field with its default and comment, as configs/default.py declares them."""
  defaults = _declared()
  if defaults is None:
    return "config fields: see configs/default.py in the repository"
  source = _DEFAULT
  fields = []
  for line in source.read_text().splitlines():
    match = re.match(r"\s*config\.([\w.]+) = (.+?)(?:\s+#\s*(.*))?$", line)
    if match and not match.group(2).startswith("ml_collections.ConfigDict"):
      name, value, comment = match.groups()
      if value.endswith("("):  # a tuple written over several lines: its value, on one
        value = repr(tuple(defaults[name.split(".")[0]][name.split(".")[1]] if "." in name else defaults[name]))
      fields.append(f"  --config.{name}={value}" + (f"\n      {comment}" if comment else ""))
  return "config fields (defaults of configs/default.py; variants override a few):\n" + "\n".join(fields)


def names_help() -> str:
  """The registered attribution methods and the sanity studies, by the names configs use."""
  from saliency_jax.attribution import registry  # pylint: disable=g-import-not-at-top
  from saliency_jax.stages import sanity  # pylint: disable=g-import-not-at-top

  wrap = lambda names: textwrap.fill(", ".join(names), width=100, initial_indent="  ", subsequent_indent="  ")
  return ("attribution methods (single_pixel.methods, sanity.methods, faithfulness.methods; 'name' or "
          "'name(option=value, ...)';\nyour own: --config.imports=my_methods, docs/extending.md):\n"
          f"{wrap(sorted(registry.METHODS))}\n\nsanity studies (sanity.studies):\n{wrap(sanity.STUDIES)}")


if __name__ == "__main__":
  if any(arg in ("--help", "-h", "--helpshort") for arg in sys.argv[1:]):
    print(__doc__.strip() + "\n\nflags:\n  --config: a config file, e.g. configs/resnet.py (or configs/sanity.py:resnet)\n"
          "  --workdir: where checkpoints, metrics and results go\n\n" + names_help() + "\n\n" + config_help())
    sys.exit(0)
  app.run(main, flags_parser=_parse_flags)
