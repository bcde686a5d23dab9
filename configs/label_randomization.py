"""Data randomisation (docs/evaluation.md, "Sanity checks"): BASE's model trained on training labels permuted by
`data.seed` until it fits them (train accuracy >= 95%, at most `train.epochs` epochs), then its
maps compared with those of the same model trained on true labels (`sanity.reference_workdir`).

    python -m saliency_jax.main --config=configs/label_randomization.py:resnet \\
        --workdir=workdirs/resnet18_random_labels --config.sanity.reference_workdir=workdirs/resnet18_seed0

BASE is one of resnet, vgg16, quickstart; the images (with their true class's pixel) are BASE's.
"""

from configs import sanity


def get_config(base: str = "resnet"):
  config = sanity.base_config(base or "resnet")
  config.data.permute_train_labels = True
  config.train.stop_at_train_accuracy = 0.95
  config.train.stop_at_pixel_accuracy = 0.0  # not BASE's shortcut stop: these labels ignore the pixel
  config.train.epochs = 4 * config.train.epochs  # a cap: random labels take longer to fit
  config.single_pixel.enabled = False
  config.sanity.studies = ("label_randomization",)
  return config
