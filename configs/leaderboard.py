"""The leaderboard: every registered attribution method on an already trained workdir, scored against
the planted pixel the model is known to use (its table: the report's leaderboard section, docs/results.md).

    python -m saliency_jax.main --config=configs/leaderboard.py:resnet_cpu --workdir=workdirs/cpu/resnet18_seed0 \\
        --config.data.source=folder --config.data.path=CIFAR10_FOLDER

BASE (after the colon) is the config the workdir was trained with: resnet_cpu, vgg16_cpu, resnet, vgg16,
quickstart. Trains nothing. Runs the single-pixel grid of `METHODS` (target `predicted`, both
outputs, test jitter (0, 0), BASE's `single_pixel.max_images`), then cascading randomisation, class
sensitivity, image sensitivity (each map against the other images' mean map) and the faithfulness
curves of the same methods. A grid cell that BASE's default grid already computed (same
method, options, target, output, jitter and images) is read back, not computed again.
`launch/reproduce_cpu.sh` runs it on every seed and switches the sanity and faithfulness stages off
for seeds other than 0 (`--config.sanity.studies= --config.faithfulness.enabled=False`).

Expected (resnet18 at CPU scale, 1,000 images, output logit, any of seeds 0-2): SmoothGrad², VarGrad,
|gradient|, |gradient| x |input|, the LRP alpha1beta0 and gamma rules and integrated gradients point at
the pixel on ~90-100% of images, the signed gradient maps on ~35-57%, the GradCAM family and FullGrad
almost never; docs/results.md has every method.
"""

from configs import default, sanity

# One entry per registered method at its documented defaults (CAM methods at the default layer: the
# last spatial block, resnet18 'layer4', vgg16 'conv5_3'); integrated gradients as the paper's
# default grid runs it, with its black and white baselines, so those cells are shared with that grid.
# `lrp` is left out: it is `lrp_epsilon` under a generic name (same function, same defaults).
# tests/test_leaderboard.py checks that every registered method is here.
PAPER_METHODS = tuple(default.get_config().single_pixel.methods)
METHODS = PAPER_METHODS + (
    "gradient",
    "smoothgrad",
    "vargrad",
    "smoothgrad_squared",
    "guided_backprop",
    "deconvnet",
    "rectgrad",
    "rectgrad_mod",
    "gradcam",
    "gradcam_pos",
    "gradcam_plusplus",
    "guided_gradcam",
    "fullgrad",
    "lrp_0",
    "lrp_epsilon",
    "lrp_gamma",
    "lrp_alpha1beta0",
)
ALIASES = {"lrp": "lrp_epsilon"}  # registered names that are another entry under a generic name


def get_config(base: str = "resnet_cpu"):
  config = sanity.base_config(base or "resnet_cpu")
  config.train.enabled = False
  sp = config.single_pixel
  sp.methods = METHODS
  sp.targets = ("predicted",)
  sp.outputs = ("softmax", "logit")
  sp.test_jitter = ((0.0, 0.0),)
  sp.examples = 0
  config.sanity.studies = ("cascading", "class_sensitivity", "image_sensitivity")
  config.sanity.methods = METHODS
  config.sanity.num_images = 100
  fc = config.faithfulness
  fc.enabled = True
  fc.methods = METHODS
  fc.num_images = 200
  # Deletion as in RISE (MoRF onto black) and insertion from a blur, both orders; ROAD both orders.
  fc.replacements = ("black", "blur")
  return config
