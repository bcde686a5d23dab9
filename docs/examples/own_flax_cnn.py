"""Your own Flax CNN: the gradient, integrated gradients and GradCAM on a named submodule.

No `train` argument, no taps: a layer is named by its submodule's path ('conv3'; a nested one as
'block/conv1'). `python docs/examples/own_flax_cnn.py`
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from saliency_jax import attribution as A


class MyCNN(nn.Module):

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(16, (3, 3), name="conv1")(x))
    x = nn.relu(nn.Conv(16, (3, 3), name="conv2")(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(nn.Conv(32, (3, 3), name="conv3")(x))
    return nn.Dense(10, name="head")(x.mean(axis=(1, 2)))


def main():
  model = MyCNN()
  x = jax.random.normal(jax.random.key(0), (8, 32, 32, 3))  # NHWC, as the model takes it
  variables = model.init(jax.random.key(1), x)
  forward = A.ModelForward(model, variables)  # any linen module; train=False only if it takes one
  print("layers:", forward.layer_names(x))  # ['conv1', 'conv2', 'conv3', 'head']

  target = A.select_targets(forward, x)  # the predicted classes; or an int, or one int per image
  grad = A.gradient(forward, x, target)
  # captum's IntegratedGradients(...).attribute(x, target=t) is baseline='zero', rule='gauss_legendre'.
  ig = jax.jit(lambda f, x, t: A.integrated_gradients(f, x, t, baseline="zero", steps=32, rule="gauss_legendre",
                                                      chunk_size=8))(forward, x, target)
  cam = A.gradcam(forward, x, target, layer="conv3")  # captum: LayerGradCam(net, net.conv3), ReLU'd, upsampled
  for name, m in (("gradient", grad), ("integrated_gradients", ig), ("gradcam", cam)):
    print(f"{name}: {m.shape}, finite: {bool(jnp.isfinite(m).all())}")
  # Completeness: IG sums to score(x) - score(baseline), to the quadrature's accuracy.
  gap = A.scores(forward, x, target) - A.scores(forward, jnp.zeros_like(x), target)
  print("IG completeness, largest relative error:", float(jnp.max(jnp.abs(ig.sum((1, 2, 3)) - gap) / jnp.abs(gap))))
  return {"gradient": grad, "integrated_gradients": ig, "gradcam": cam, "gap": gap}


if __name__ == "__main__":
  main()
