"""Every setting, with the paper's values where the paper fixed one (docs/evaluation.md, "Models
and training").

Variants (resnet.py, vgg16.py, quickstart.py) start from this and override a few fields;
any field can be overridden on the command line, e.g. `--config.train.epochs=5`; `--help` lists
them all. On its own it trains resnet18 on the synthetic images:

    python -m saliency_jax.main --config=configs/default.py --workdir=workdirs/default
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0  # model seed: initialisation, shuffling, dropout
  config.compilation_cache = ""  # folder of JAX's compiled programs; empty: $XDG_CACHE_HOME/saliency_jax/jax; off: none
  # Your own attribution methods: modules whose `@registry.register` methods every stage then knows
  # by name (docs/extending.md). Module names or .py files, found from the working directory.
  config.imports = ()  # modules (or .py files) imported before anything is checked, e.g. ('my_methods',)
  # The CPU path (docs/performance.md): fast convolution forms, XLA options, IG's affine head.
  config.cpu_lowering = "auto"  # auto (on for CPU unless SALIENCY_JAX_CPU_LOWERING=0) | on | off; no-op on GPU/TPU

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet18"  # resnet18 | vgg16 | small_cnn | mlp
  config.model.activation = "relu"  # any flax.linen activation name
  config.model.maxpool = True  # resnet18 only: keep the 3x3/2 max-pool after the stem
  config.model.stem = "3x3"  # resnet18 only: 3x3 (the CIFAR stem) | 7x7 (torchvision's standard 7x7/2 stem)
  config.model.channels = (32, 64)  # small_cnn only: the width of each conv block
  config.model.dropout_rate = 0.5  # vgg16 only: dropout after each of its two hidden classifier layers, in training
  config.model.hidden = (256, 128)  # mlp only: the widths of its hidden layers
  config.model.num_classes = 0  # the model's outputs; 0: the data's classes (any other value must equal them)
  # A PyTorch state_dict (.pt/.pth, or .npz) of this model (models.torch_import) to evaluate instead
  # of a checkpoint of the workdir; needs train.enabled=False. Empty: the workdir's own training.
  config.model.torch_weights = ""  # a PyTorch state_dict to evaluate (with train.enabled=False); empty: none

  config.data = ml_collections.ConfigDict()
  config.data.source = "synthetic"  # cifar10 (tfds) | folder | synthetic
  config.data.path = ""  # folder source: DIR with train/<class>/ and test/<class>/
  config.data.cache_dir = ""  # folder source cache; empty: $XDG_CACHE_HOME/saliency_jax
  config.data.tfds_data_dir = ""  # cifar10 source; empty: tfds' default
  config.data.seed = 0  # pixel location, jitter, conflict classes, synthetic images
  config.data.normalization = "dataset"  # dataset (training-set statistics) | imagenet
  config.data.max_per_class = 0  # keep the first N images per class of each split; 0: all
  config.data.synthetic_train_per_class = 500  # synthetic source: training images per class
  config.data.synthetic_test_per_class = 100  # synthetic source: test images per class
  # Data randomisation (docs/evaluation.md, "Sanity checks").
  config.data.permute_train_labels = False  # True: train on labels permuted by data.seed (test labels stay true)

  config.pixel = ml_collections.ConfigDict()
  config.pixel.variant = "colour"  # colour (class colour, one location) | location (one colour, class locations)
  config.pixel.location = ()  # (row, col); empty: drawn from data.seed
  config.pixel.position_sd = 0.0  # std of the per-image location offset, in pixels
  config.pixel.colour_sd = 0.0  # std of the per-image RGB noise
  config.pixel.fixed_colour = (255, 0, 255)  # location variant: the one colour
  config.pixel.class_locations = ()  # location variant: ((row, col),) * classes; empty: drawn

  config.train = ml_collections.ConfigDict()
  config.train.enabled = True  # False: evaluate the newest checkpoint in --workdir without training
  config.train.learning_rate = 0.001  # SGD step size (the paper's)
  config.train.momentum = 0.9  # PyTorch semantics: buf = momentum * buf + grad
  config.train.weight_decay = 0.0  # PyTorch semantics: added to the gradient before momentum
  config.train.batch_size = 256  # global, split over all devices
  config.train.epochs = 200  # the most epochs to train (the stop_at_* fields may stop earlier)
  config.train.checkpoint_every_epochs = 10  # and after the last epoch
  config.train.keep_checkpoints = 3  # newest kept; 0 keeps all
  config.train.dtype = "float32"  # float32 | bfloat16 (compute; parameters stay float32)
  config.train.eval_batch_size = 1000  # test images per compiled call of the per-epoch evaluation
  # auto: the whole epoch as one compiled scan on GPU/TPU, one dispatch per step on CPU
  config.train.epoch_loop = "auto"  # auto | scan | python
  config.train.eval_conditions = ("pixel", "nopix", "conflict")  # test sets evaluated after every epoch
  config.train.tensorboard = True  # also write TensorBoard events next to metrics.csv
  # > 0: stop after the first epoch whose train accuracy (running, over the epoch) reaches it;
  # the label-randomisation run trains until it fits its permuted labels (configs/label_randomization.py).
  config.train.stop_at_train_accuracy = 0.0  # > 0: stop once an epoch's train accuracy reaches it
  # > 0: stop after the first epoch whose test accuracy with the pixel reaches it: the model has
  # taken the shortcut (configs/vgg16_cpu.py). train.epochs stays the most it may train.
  config.train.stop_at_pixel_accuracy = 0.0  # > 0: stop once the test accuracy with the pixel reaches it

  # The single-pixel evaluation (docs/evaluation.md, "The single-pixel grid") after training:
  # workdir/single_pixel/results.csv.
  config.single_pixel = ml_collections.ConfigDict()
  config.single_pixel.enabled = True  # run the grid after training (workdir/single_pixel/)
  # 'name' or 'name(option=value, ...)' of any registered attribution method; reduce= sets the
  # channel reduction (default 'mean'). The original's grid:
  config.single_pixel.methods = (  # attribution methods, 'name' or 'name(option=value, ...)'
      "absolute_gradient",
      "gradient_x_input",
      "abs_gradient_x_abs_input",
      "integrated_gradients(baseline='black', steps=100, rule='original')",
      "integrated_gradients(baseline='white', steps=100, rule='original')",
  )
  config.single_pixel.targets = ("predicted", "label")  # the class explained: predicted | label
  config.single_pixel.outputs = ("softmax", "logit")  # the score explained: softmax | logit
  config.single_pixel.test_jitter = ((0.0, 0.0), (0.0, 5.0), (3.0, 5.0), (3.0, 3.0), (1.0, 3.0))  # (position, colour) sd
  # Evaluation sizes (here, in sanity and in faithfulness) change memory and speed, not results; 0 sizes them for
  # the device (saliency_jax/backend.py): on CPU as measured (docs/performance.md), on a GPU from its memory.
  config.single_pixel.batch_size = 0  # images per compiled call, split over the devices; 0: for the device (CPU: 250)
  config.single_pixel.chunk_size = 0  # IG path points per vectorised chunk; 0: for the device (CPU: 4)
  config.single_pixel.max_images = 0  # a class-balanced subset of N test images, drawn from data.seed; 0: all
  config.single_pixel.examples = 6  # images in examples.png; 0: no figure

  # Faithfulness curves (saliency_jax/stages/faithfulness.py) on the trained model, off by default:
  # workdir/faithfulness/results.csv and curves.png. Each method's maps (channel reduction as in the
  # grid), then deletion / insertion (pixel flipping) per order x replacement, and ROAD per order.
  config.faithfulness = ml_collections.ConfigDict()
  config.faithfulness.enabled = False  # run the faithfulness curves after the other stages
  config.faithfulness.methods = (  # attribution methods, as single_pixel.methods
      "gradient",
      "absolute_gradient",
      "gradient_x_input",
      "integrated_gradients(baseline='black', steps=32)",
  )
  config.faithfulness.target = "predicted"  # predicted | label: the class explained and scored
  config.faithfulness.output = "logit"  # what the methods explain: logit | softmax
  config.faithfulness.score = "softmax"  # what the curves measure: softmax (probability) | logit
  config.faithfulness.condition = "pixel"  # test images: pixel | nopix | conflict (training's jitter)
  config.faithfulness.curves = ("deletion", "insertion", "road")  # which curves
  config.faithfulness.orders = ("morf", "lerf")  # most / least relevant pixels first
  # Removed pixels become: black (the normalised black image) | mean (the training set's mean colour) | blur
  config.faithfulness.replacements = ("black", "mean", "blur")  # what removed pixels become
  config.faithfulness.blur_sigma = 5.0  # in pixels, for the blur replacement
  config.faithfulness.steps = 16  # deletion / insertion points: 0, 1/16, ..., 1 of the pixels
  config.faithfulness.road_percentages = (10, 20, 30, 40, 50, 60, 70, 80, 90)  # ROAD's points: % of pixels imputed
  config.faithfulness.road_noise = 0.01  # ROAD's imputation noise, in [0, 1] pixel units (the paper's)
  config.faithfulness.num_images = 500  # a class-balanced subset of N test images, drawn from data.seed; 0: all
  config.faithfulness.batch_size = 0  # images per call (x curve points per forward); 0: for the device (CPU: 50)
  config.faithfulness.step_chunk = 0  # curve points per forward pass (memory only; 0: all at once)
  config.faithfulness.chunk_size = 0  # IG path points per vectorised chunk; 0: for the device (CPU: 8)
  config.faithfulness.seed = 0  # ROAD noise (image i: fold_in(fold_in(key(seed), 5), i))

  # The sanity checks (docs/evaluation.md, "Sanity checks") on the trained model:
  # workdir/sanity/<study>.csv and figures.
  config.sanity = ml_collections.ConfigDict()
  # Run in this order after training and the single-pixel grid; empty: none. On the command line
  # either spelling: --config.sanity.studies="('cascading', 'independent')" or =cascading,independent.
  config.sanity.studies = ()  # cascading | independent | class_sensitivity | image_sensitivity | input_invariance | label_randomization
  # The gradient family, and the positive aggregation / propagation comparisons: GradCAM vs
  # GradCAM_Pos, GradCAM++ and FullGrad; Guided Backprop and RectGrad vs the gradient and
  # RectGrad_Mod; LRP-gamma=inf vs LRP-0.
  config.sanity.methods = (  # attribution methods, as single_pixel.methods
      "gradient",
      "gradient_x_input",
      "integrated_gradients(baseline='black', steps=32)",
      "guided_backprop",
      "rectgrad",
      "rectgrad_mod",
      "gradcam",
      "gradcam_pos",
      "gradcam_plusplus",
      "fullgrad",
      "lrp_0",
      "lrp_gamma(gamma=inf)",
  )
  config.sanity.target = "predicted"  # predicted (by the trained model, then held fixed) | label
  config.sanity.output = "logit"  # logit | softmax
  config.sanity.num_images = 100  # a class-balanced subset of N test images from data.seed (with the pixel, training's jitter)
  config.sanity.batch_size = 0  # images per compiled call, split over the devices; 0: for the device (CPU: 50)
  config.sanity.chunk_size = 0  # IG path points per vectorised chunk; 0: for the device (CPU: 8)
  # Randomised models vectorised together in the one program that runs every step; 1 maps them one
  # after another (on CPU 4x faster than 4: vmapping over kernels makes grouped convolutions).
  config.sanity.model_chunk = 1  # randomised models vectorised together (see above)
  config.sanity.seed = 0  # re-initialisation (layer i: fold_in(key, i)), calibration maps, method keys
  config.sanity.distribution = "truncated_normal"  # truncated_normal | uniform (the same std)
  config.sanity.scale = 0.01  # std of the re-initialisation
  config.sanity.input_shift = (1.0,)  # c of the shifted twin, in model-input units: one, or one per channel
  config.sanity.reference_workdir = ""  # label_randomization: the same model trained on true labels
  config.sanity.strip_images = 2  # images with a strip figure of maps per study
  # Every setting exists from here on: a variant (or the command line) that sets a field this file
  # does not declare, a typo, fails where it is set, naming the field and the nearest one that exists.
  config.lock()
  return config
