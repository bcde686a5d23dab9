"""The paper's VGG16 run on CIFAR-10: as configs/resnet.py with the other architecture."""

from configs import resnet


def get_config():
  config = resnet.get_config()
  config.model.name = "vgg16"
  return config
