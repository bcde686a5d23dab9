"""The paper's ResNet-18 run on CIFAR-10 (SPEC section 2): SGD 0.001/0.9, batch 256, 200 epochs.

Online: tensorflow-datasets downloads CIFAR-10. Offline: add
`--config.data.source=folder --config.data.path=DIR` for an image-folder copy.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "resnet18"
  config.data.source = "cifar10"
  config.pixel.location = (26, 15)  # the published run's location
  return config
