"""ResNet-18 on the CIFAR-10 copy at the scale a 2-core CPU allows: the paper's experiment, with
its schedule shortened until the model has taken the shortcut.

What differs from configs/resnet.py (the paper: SGD lr 0.001, momentum 0.9, batch 256, 200 epochs),
and why the question survives:
- lr 0.01, batch 128, 5 epochs (constant learning rate). The paper's 200 epochs at lr 0.001 are
  ~27 h per model here (105 images/s). Measured on seed 0 (test accuracy with the pixel / without
  it, per epoch): 96.5 / 14.1, 98.5 / 13.7, 98.8 / 13.9, 99.3 / 15.6, 99.7 / 16.9%: the shortcut is
  taken (>= 99% with the pixel, near chance without) from epoch 4; 5 leaves a margin for the other
  seeds. (A stop at a running train accuracy of 99% never fired: it plateaus at 98.5% while the test
  accuracy with the pixel is 99.7%.) The question is whether a saliency method points at a pixel
  the model is known to rely on; that needs a model that relies on it, which the report checks per
  seed with the accuracies with the pixel, without it and with a conflicting pixel. A model trained
  for a few epochs may still read more of the image than the paper's (its no-pixel accuracy above
  chance says how much); docs/results.md reports those accuracies beside every table.
- The single-pixel grid runs on a seeded class-balanced subset (1,000 test images at test jitter
  (0, 0); launch/reproduce_cpu.sh adds 500 at (3, 5)), not on all 10,000: a 100-step integrated
  gradients cell costs ~0.6 s per image here.
Everything else (model, pixel location and colours, normalisation, methods, targets, outputs, the
100 IG steps and the original rule) is the paper's. Offline data: add
`--config.data.source=folder --config.data.path=DIR`.

    python -m saliency_jax.main --config=configs/resnet_cpu.py --workdir=workdirs/cpu/resnet18_seed0 \
        --config.data.source=folder --config.data.path=DIR

(launch/reproduce_cpu.sh runs it for seeds 0, 1, 2 and the rest of the experiment.) Expected, mean of
three seeds: 99.8% test accuracy with the pixel, 15.5% without it, 1.8% with another class's pixel;
pointing accuracy 93-99.5% for |gradient|, |gradient| x |input| and integrated gradients, 50-52% for
gradient x input (docs/results.md).
"""

from configs import resnet


def get_config():
  config = resnet.get_config()
  config.train.learning_rate = 0.01
  config.train.batch_size = 128
  config.train.epochs = 5
  config.train.checkpoint_every_epochs = 1
  config.train.keep_checkpoints = 2
  config.single_pixel.test_jitter = ((0.0, 0.0),)
  config.single_pixel.max_images = 1000
  config.sanity.num_images = 100
  return config
