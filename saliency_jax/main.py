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

from absl import app, flags, logging
from ml_collections import config_flags

from saliency_jax import config_file
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


def _resume_hint(workdir: pathlib.Path) -> str:
  """What a rerun of the same command will start from: the newest checkpoint in `workdir`."""
  epochs = [int(p.name) for p in (workdir / "checkpoints").glob("*") if p.name.isdigit()]
  if not epochs:
    return f"no checkpoint in {workdir} yet; rerun the same command to train from the start"
  return (f"the newest checkpoint in {workdir} is after epoch {max(epochs)}; rerun the same command to resume "
          "from it (finished grid cells and sanity methods are kept)")


def config_help() -> str:
  """Every config field with its default and comment, as configs/default.py declares them."""
  defaults = config_file.declared()
  if defaults is None:
    return "config fields: see configs/default.py in the repository"
  source = config_file.DEFAULT
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
  app.run(main, flags_parser=lambda argv: config_file.parse_flags(argv, _CONFIG))
