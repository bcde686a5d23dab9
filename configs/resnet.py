"""The paper's ResNet-18 run on CIFAR-10 (docs/evaluation.md, "Models and training"): SGD
0.001/0.9, batch 256, 200 epochs, the pixel at row 26, col 15, then the original's single-pixel grid
on all 10,000 test images at the five test jitters.

    python -m saliency_jax.main --config=configs/resnet.py --workdir=workdirs/resnet18_seed0

Online: tensorflow-datasets downloads CIFAR-10 (pip install -e '.[tfds]'). Offline: add
`--config.data.source=folder --config.data.path=DIR` for an image-folder copy (docs/running.md,
"Getting CIFAR-10"). `--config.seed=1`, `2` for the other model seeds.

Expected: GPU work, not run at this scale here. The CPU-scale run of the same question
(configs/resnet_cpu.py) took the shortcut: 99.8% test accuracy with the pixel, 15.7% without it,
2.3% with another class's pixel (mean of three seeds; docs/results.md).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "resnet18"
  config.data.source = "cifar10"
  config.pixel.location = (26, 15)  # the published run's location
  return config
