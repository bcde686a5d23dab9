"""Attribution methods: `method(forward, x_BHWC, target_B, *, output='logit'|'softmax', **options)`.

`forward(x_BHWC) -> logits_BK` is any JAX function; methods that look inside the network
(Guided Backprop, Deconvnet, RectGrad, the CAM family, FullGrad, LRP) need a
`ModelForward(model, variables)` of any flax.linen model, which is also a forward and names its
layers by submodule path ('conv3', 'layer4_1'). Every method is a pure function: it `jit`s
(`jax.jit(method)(model_forward, x, target)`), `vmap`s, and shards over a batch; its targets,
images and options are checked once at its boundary (`registry.register`). Your own model and
method, and models trained in PyTorch: docs/extending.md.

By name: `registry.METHODS` / `get(name)`; from a config: `registry.from_config`; bound to a
model in one line per call: `Explainer`. Turning maps into images: `reduce_channels`,
`normalize_for_display`.
"""

import importlib
import pkgutil
import types

from saliency_jax.attribution import registry
from saliency_jax.attribution.activations import (RectifiedReLU, deconv_relu, deconvnet, guided_backprop, guided_relu,
                                                  rectgrad, rectgrad_mod)
from saliency_jax.attribution.cam import (class_activation_map, fullgrad, fullgrad_decomposition, gradcam,
                                          gradcam_plusplus, gradcam_pos, guided_gradcam)
from saliency_jax.attribution.core import OUTPUTS, TARGETS, ModelForward, input_gradient, scores, select_targets
from saliency_jax.attribution.display import normalize_for_display, reduce_channels
from saliency_jax.attribution.explain import Explainer
from saliency_jax.attribution.gradients import (abs_gradient_x_abs_input, absolute_gradient, gradient,
                                                gradient_x_input)
from saliency_jax.attribution.integrated import BASELINES, RULES, integrated_gradients, make_baseline, path_points
from saliency_jax.attribution.lrp import lrp, lrp_0, lrp_alpha1beta0, lrp_epsilon, lrp_forward, lrp_gamma
from saliency_jax.attribution.noise import smoothgrad, vargrad
from saliency_jax.attribution.registry import METHODS, from_config, get

__all__ = [
    "METHODS", "get", "from_config", "registry", "Explainer", "ModelForward", "OUTPUTS", "TARGETS", "scores",
    "input_gradient", "select_targets", "gradient", "absolute_gradient", "gradient_x_input",
    "abs_gradient_x_abs_input", "integrated_gradients", "make_baseline", "path_points", "RULES", "BASELINES",
    "smoothgrad", "vargrad", "guided_relu", "deconv_relu", "RectifiedReLU", "guided_backprop", "deconvnet",
    "rectgrad", "rectgrad_mod", "class_activation_map", "gradcam", "gradcam_pos", "gradcam_plusplus",
    "guided_gradcam", "fullgrad", "fullgrad_decomposition", "lrp", "lrp_0", "lrp_epsilon", "lrp_gamma",
    "lrp_alpha1beta0", "lrp_forward", "reduce_channels", "normalize_for_display",
]

# Every module of the package is imported, so a method's file registers it: adding a method is one
# file (and its test) and nothing else; it is then `attribution.<name>` (over a module of the same
# name) and known by name to the Explainer, the single-pixel grid and the sanity studies.
for _module in pkgutil.iter_modules(__path__):
  importlib.import_module(f"{__name__}.{_module.name}")
for _name, _method in METHODS.items():
  if not callable(globals().get(_name)) or isinstance(globals()[_name], types.ModuleType):
    globals()[_name] = _method
