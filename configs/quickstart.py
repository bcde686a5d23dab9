"""A small end-to-end run with no download: synthetic images, a small CNN, a few epochs.

Reports how well the model does with the pixel, without it, and when the pixel lies. Runs in
well under 2 minutes on a 2-core CPU.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.name = "small_cnn"
  config.data.source = "synthetic"
  config.data.synthetic_train_per_class = 500
  config.data.synthetic_test_per_class = 100
  config.train.learning_rate = 0.03
  config.train.batch_size = 64
  config.train.epochs = 6
  config.train.checkpoint_every_epochs = 2
  config.train.eval_batch_size = 500
  return config
