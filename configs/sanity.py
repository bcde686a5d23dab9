"""The sanity checks on an already trained workdir: `--config=configs/sanity.py:BASE` with BASE one
of resnet, vgg16, resnet_cpu, vgg16_cpu, quickstart (the config the workdir was trained with). Trains nothing, runs no
single-pixel grid; runs the model-only studies (one with `--config.sanity.studies=cascading`).

    python -m saliency_jax.main --config=configs/sanity.py:resnet --workdir=workdirs/resnet18_seed0
"""

import importlib

BASES = ("resnet", "vgg16", "resnet_cpu", "vgg16_cpu", "quickstart", "default")


def base_config(name: str):
  if name not in BASES:
    raise ValueError(f"config argument {name!r} is not allowed; choose one of: {', '.join(BASES)} "
                     "(e.g. --config=configs/sanity.py:resnet)")
  return importlib.import_module(f"configs.{name}").get_config()


def get_config(base: str = "resnet"):
  config = base_config(base or "resnet")
  config.train.enabled = False
  config.single_pixel.enabled = False
  config.sanity.studies = ("cascading", "independent", "class_sensitivity", "image_sensitivity", "input_invariance")
  return config
