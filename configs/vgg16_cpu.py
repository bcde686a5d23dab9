"""VGG16 on the CIFAR-10 copy at the scale a 2-core CPU allows: as configs/resnet_cpu.py (which
says what differs from the paper and why) with the other architecture."""

from configs import resnet_cpu


def get_config():
  config = resnet_cpu.get_config()
  config.model.name = "vgg16"
  return config
