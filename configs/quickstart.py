"""A small end-to-end run with no download: synthetic images, a small CNN, a few epochs.

Reports how well the model does with the pixel, without it, and when the pixel lies, then runs a
small single-pixel grid (every default method, no test jitter, 250 images, IG with 16 steps).

    python -m saliency_jax.main --config=configs/quickstart.py --workdir=workdirs/quickstart

Expected (about 55 s on 2 idle CPU cores, 33 s once its programs are in the compilation cache; under
load up to 90 s): after epoch 6 about 88% test accuracy with the pixel, 24% without it and 14% with
another class's pixel; in the grid, |gradient| and |gradient| x |input| point at the pixel on 96-98%
of the images, integrated gradients on about 86-100%, gradient x input on about 64% with the softmax
output and 93-94% with the logit. The additive columns (a black image carrying only the pixel) stay
low for this small CNN, unlike the CIFAR models: it does not classify a black image by its pixel.
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
  # A small grid, so the run ends with a results table: every default method, one test jitter.
  config.single_pixel.test_jitter = ((0.0, 0.0),)
  config.single_pixel.methods = (
      "absolute_gradient",
      "gradient_x_input",
      "abs_gradient_x_abs_input",
      "integrated_gradients(baseline='black', steps=16, rule='original')",
      "integrated_gradients(baseline='white', steps=16, rule='original')",
  )
  config.single_pixel.max_images = 250
  return config
