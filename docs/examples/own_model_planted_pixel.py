"""Your own Flax model against the planted pixel: train it, then score methods by pointing accuracy.

The runs (`saliency_jax.main`) train and score the library's models; the same test for a network of
your own goes through the Python API: `data.prepare` plants the pixel (here in synthetic images, no
download), you train as you like (plain optax here), and a method points at the pixel on an image
when the planted pixel is among its map's maxima. `python docs/examples/own_model_planted_pixel.py`
(about a minute on 2 CPU cores) prints about 83% test accuracy with the pixel and 22% without it,
and how often each method points at the pixel: |gradient|, gradient x input and integrated
gradients on 79-89% of the 500 test images, GradCAM at `conv2` (an 8 x 8 map) almost never.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax

from saliency_jax import attribution as A
from saliency_jax import data
from saliency_jax.evaluation import single_pixel


class MyCNN(nn.Module):

  @nn.compact
  def __call__(self, x, training: bool = False):
    x = nn.max_pool(nn.relu(nn.Conv(32, (3, 3), name="conv1")(x)), (2, 2), (2, 2))
    x = nn.max_pool(nn.relu(nn.Conv(64, (3, 3), name="conv2")(x)), (2, 2), (2, 2))
    x = nn.Dropout(0.2, deterministic=not training)(x.reshape(x.shape[0], -1))
    return nn.Dense(10, name="head")(x)


def planted_pixel_data(per_class: int, test_per_class: int, seed: int = 0) -> data.Prepared:
  """Synthetic images with the planted pixel, as configs/default.py plants it: a class-coded colour at one
  location drawn from the seed, no jitter."""
  config = ml_collections.ConfigDict({
      "data": {"source": "synthetic", "seed": seed, "normalization": "dataset",
               "synthetic_train_per_class": per_class, "synthetic_test_per_class": test_per_class},
      "pixel": {"variant": "colour", "location": (), "position_sd": 0.0, "colour_sd": 0.0}})
  return data.prepare(config, conditions=("pixel", "nopix"))


def train(model, prepared: data.Prepared, epochs: int, batch: int = 64, seed: int = 0):
  images, labels = prepared.train.images_BHWC, prepared.train.labels_B
  variables = model.init(jax.random.key(seed), prepared.normalization(images[:1]))
  optimizer = optax.sgd(0.03, momentum=0.9)
  opt_state = optimizer.init(variables)

  @jax.jit
  def step(variables, opt_state, x_u8, y, key):
    def loss(v):
      logits = model.apply(v, prepared.normalization(x_u8), training=True, rngs={"dropout": key})
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    updates, opt_state = optimizer.update(jax.grad(loss)(variables), opt_state)
    return optax.apply_updates(variables, updates), opt_state

  key = jax.random.key(seed + 1)
  for epoch in range(epochs):
    order = jax.random.permutation(jax.random.fold_in(key, epoch), len(labels))
    for i in range(len(labels) // batch):
      idx = order[i * batch:(i + 1) * batch]
      variables, opt_state = step(variables, opt_state, images[idx], labels[idx], jax.random.fold_in(key, i))
  return variables


def pointing(map_BHWC, location_B2) -> float:
  """The share of images whose planted pixel is among the maxima of the map's channel mean."""
  attributed_BHW = single_pixel.pointing_mask(A.reduce_channels(map_BHWC, "mean"))
  planted_BHW = single_pixel.location_mask(location_B2, map_BHWC.shape[1:3])
  return float((attributed_BHW & planted_BHW).any(axis=(1, 2)).mean())


def main(per_class: int = 500, epochs: int = 6, test_per_class: int = 50):
  prepared = planted_pixel_data(per_class, test_per_class)
  model = MyCNN()
  variables = train(model, prepared, epochs)
  forward = A.ModelForward(model, variables)  # called with training=False
  accuracy = {c: float((A.select_targets(forward, prepared.normalization(s.images_BHWC)) == s.labels_B).mean())
              for c, s in prepared.tests.items()}
  test = prepared.tests["pixel"]
  x = prepared.normalization(test.images_BHWC)
  target = A.select_targets(forward, x)  # the predicted class, as the grid's default
  maps = {
      "absolute_gradient": A.absolute_gradient(forward, x, target),
      "gradient_x_input": A.gradient_x_input(forward, x, target),
      "integrated_gradients": A.integrated_gradients(forward, x, target, baseline="black", steps=16,
                                                     normalization=prepared.normalization, chunk_size=8),
      "gradcam": A.gradcam(forward, x, target, layer="conv2"),
  }
  scores = {name: pointing(m, test.location_B2) for name, m in maps.items()}
  print(f"test accuracy with the pixel {accuracy['pixel']:.1%}, without it {accuracy['nopix']:.1%}")
  for name, score in scores.items():
    print(f"{name:22s} points at the planted pixel on {score:.1%} of {len(target)} images")
  return accuracy, scores


if __name__ == "__main__":
  main()
