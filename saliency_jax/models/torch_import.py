"""Models trained elsewhere: a PyTorch `state_dict` into the project's Flax models.

  model, variables = from_torch("resnet18_cifar.pt", "resnet18")   # or a dict name -> array
  logits = model.apply(variables, x_BHWC, train=False)

Layouts read (torchvision's module names, with '.'):
  resnet18   torchvision `resnet18`: conv1, no bias; bn1; layerS.B.{conv1,bn1,conv2,bn2,downsample.0,
             downsample.1}; fc. conv1 is the CIFAR stem 3x3/1 (64, 3, 3, 3) by default, torchvision's
             standard 7x7/2 stem (64, 3, 7, 7) with stem='7x7' (a standard state_dict read without it
             fails on conv1.weight with a message saying so). Whether the 3x3/2 max-pool follows the
             stem is not in a state_dict either: pass maxpool=False for CIFAR ResNets trained without it.
  vgg16      torchvision `vgg16` (configuration D, no BatchNorm): features.N (N counts the ReLUs and
             max-pools too: the convs are 0, 2, 5, 7, 10, ..., 28; the Flax convs are named by their
             index in VGG16_LAYOUT instead), classifier.{0,3,6}.
  small_cnn  a torch.nn twin of `models.small.SmallCNN`: conv1, conv2 (3x3, padding 1, bias), each
             followed by ReLU and a 2x2/2 max-pool, then `out` = Linear on torch.flatten of the NCHW map.

What changes on the way (torch -> flax):
  Conv2d weight (O, I, kh, kw)      -> kernel (kh, kw, I, O)
  Linear weight (out, in)           -> kernel (in, out)
  BatchNorm2d weight, bias          -> params scale, bias
  running_mean, running_var         -> batch_stats mean, var;  num_batches_tracked is ignored
  A Linear on a flattened map: torch flattens NCHW as (C, H, W). The Flax VGG transposes its pooled
  map to (C, 7, 7) before flattening (models/vgg.py), so classifier.0 keeps torch's row order; the
  Flax SmallCNN flattens NHWC as (H, W, C), so the rows of small_cnn's `out` are permuted.

Every missing or unexpected key and every shape mismatch raises one ValueError that names each key
and the shape expected in torch's layout. torch is imported only to read a .pt/.pth file; a dict of
numpy arrays (or a .npz file) needs no torch.
"""

from __future__ import annotations

import os
import re
import zipfile
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from saliency_jax import models

SUPPORTED = ("resnet18", "vgg16", "small_cnn")


class _Leaf(NamedTuple):
  collection: str  # 'params' or 'batch_stats'
  path: tuple[str, ...]  # flax module path and leaf name, e.g. ('layer1_0', 'bn1', 'scale')
  torch_key: str
  torch_shape: tuple[int, ...]
  to_flax: Callable[[np.ndarray], np.ndarray]


def load_state_dict(source) -> dict[str, np.ndarray]:
  """name -> numpy array from a path (.pt/.pth with torch, .npz with numpy) or a mapping whose
  values are numpy arrays or torch tensors."""
  if isinstance(source, (str, os.PathLike)):
    path = os.fspath(source)
    if path.endswith(".npz"):
      try:
        loaded = np.load(path, allow_pickle=False)
      except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path!r} is not a readable .npz archive ({type(e).__name__}: {e})") from None
      if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise ValueError(f"{path!r} holds a single array (an .npy file?), not an .npz archive of named arrays")
      try:
        with loaded as f:
          return {k: f[k] for k in f.files}
      except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path!r} is a damaged .npz archive ({type(e).__name__}: {e})") from None
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"reading {path!r} needs torch (pip install -e '.[bench]'); without torch, pass a dict "
                        "of numpy arrays or an .npz file") from e
    source = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(source, Mapping):
    raise ValueError(f"expected a state_dict (a mapping name -> array), got {type(source).__name__}")
  return {str(k): _to_numpy(v) for k, v in source.items()}


def _to_numpy(value) -> np.ndarray:
  if hasattr(value, "detach"):  # a torch tensor; bfloat16 has no numpy dtype, so widen first
    value = value.detach().cpu()
    value = value.float().numpy() if value.is_floating_point() else value.numpy()
  return np.asarray(value)


def _torch_module(flax_name: str, renamed: Mapping[str, str]) -> str:
  """Flax submodule name -> torch module path: 'layer1_0' -> 'layer1.0', 'classifier_3' ->
  'classifier.3', 'downsample_conv' -> 'downsample.0' (torchvision's Sequential(conv, bn)), and
  any name in `renamed`."""
  if flax_name in renamed:
    return renamed[flax_name]
  if flax_name == "downsample_conv":
    return "downsample.0"
  if flax_name == "downsample_bn":
    return "downsample.1"
  return re.sub(r"^(layer\d+|features|classifier)_(\d+)$", r"\1.\2", flax_name)


def _vgg_feature_names(layout) -> dict[str, str]:
  """The Flax VGG names a conv `features_<i>` with i its index in `layout` (no ReLU entries);
  torchvision's `features` Sequential holds Conv2d, ReLU per conv and one MaxPool2d per 'M', so
  layout index 3 (the third conv) is features.5."""
  names, index = {}, 0
  for i, item in enumerate(layout):
    if item != "M":
      names[f"features_{i}"] = f"features.{index}"
    index += 1 if item == "M" else 2
  return names


def _flatten_nchw_rows(h: int, w: int, c: int) -> Callable[[np.ndarray], np.ndarray]:
  """Linear weight (out, C*H*W), rows in torch's NCHW flatten order -> kernel (H*W*C, out)."""

  def to_flax(weight):
    out = weight.shape[0]
    return weight.reshape(out, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out)

  return to_flax


def _plan(model_name: str, model: nn.Module, expected, input_shape) -> list[_Leaf]:
  """One entry per Flax variable: where it comes from in the state_dict and how it is transformed."""
  nchw_flatten, renamed = {}, {}
  if model_name == "vgg16":
    renamed = _vgg_feature_names(model.layout)
  if model_name == "small_cnn":
    # SmallCNN flattens its last (H', W', C) map NHWC; every block halves the size (2x2/2 pool).
    scale = 2 ** len(model.channels)
    nchw_flatten["out"] = (input_shape[1] // scale, input_shape[2] // scale, model.channels[-1])
  plan = []
  for collection, tree in expected.items():
    for key_path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
      path = tuple(k.key for k in key_path)
      *modules, name = path
      prefix = ".".join(_torch_module(m, renamed) for m in modules)
      shape = tuple(leaf.shape)
      if collection == "batch_stats":
        torch_name, torch_shape, to_flax = {"mean": "running_mean", "var": "running_var"}[name], shape, None
      elif name == "kernel" and len(shape) == 4:  # conv: (kh, kw, I, O) <- (O, I, kh, kw)
        torch_name, torch_shape = "weight", (shape[3], shape[2], shape[0], shape[1])
        to_flax = lambda a: a.transpose(2, 3, 1, 0)
      elif name == "kernel" and len(shape) == 2:  # linear: (in, out) <- (out, in)
        torch_name, torch_shape = "weight", shape[::-1]
        to_flax = _flatten_nchw_rows(*nchw_flatten[modules[-1]]) if modules[-1] in nchw_flatten else (lambda a: a.T)
      elif name == "scale":
        torch_name, torch_shape, to_flax = "weight", shape, None
      elif name == "bias":
        torch_name, torch_shape, to_flax = "bias", shape, None
      else:
        raise NotImplementedError(f"{model_name}: no torch counterpart known for {collection}/{'/'.join(path)}")
      plan.append(_Leaf(collection, path, f"{prefix}.{torch_name}", torch_shape, to_flax or (lambda a: a)))
  return plan


def _hint(model_name: str, key: str, shape, expected, num_classes: int) -> str:
  if len(shape) in (1, 2) and expected[0] == num_classes and shape[0] != num_classes and shape[1:] == expected[1:]:
    return (f" (its model has {shape[0]} classes: pass num_classes={shape[0]}; in a config model.num_classes="
            f"{shape[0]}, which the pipeline's stages take only for data of {shape[0]} classes: explain it with "
            "attribution.Explainer instead)")
  if model_name == "resnet18" and key == "conv1.weight" and len(shape) == 4 and shape[-1] == 7:
    return " (this is torchvision's standard 7x7/2 stem: pass stem='7x7', in a config model.stem='7x7')"
  if model_name == "resnet18" and key == "conv1.weight" and len(shape) == 4 and shape[-1] == 3:
    return " (this is the CIFAR 3x3/1 stem: pass stem='3x3', in a config model.stem='3x3')"
  return ""


def _require_supported(model_name: str) -> None:
  if model_name not in SUPPORTED:
    raise ValueError(f"model_name={model_name!r} has no torch layout here; choose one of: "
                     f"{', '.join(map(repr, SUPPORTED))}")


def from_torch(state_dict_or_path, model_name: str, num_classes: int = 10, *,
               input_shape=(1, 32, 32, 3), **model_kwargs) -> tuple[nn.Module, dict[str, Any]]:
  """(model, variables) for `models.create_model(model_name, num_classes, **model_kwargs)` with the
  weights of a PyTorch state_dict (a .pt/.pth/.npz path or a mapping name -> array/tensor).

  `input_shape` (B, H, W, C) sizes the model's variables; it matters only where a layer's size
  depends on the image size (small_cnn's `out`). Raises ValueError listing every missing or
  unexpected key and every shape mismatch, each with the shape expected in torch's layout.
  """
  _require_supported(model_name)
  model = models.create_model(model_name, num_classes=num_classes, **model_kwargs)
  return model, variables_from_torch(state_dict_or_path, model, model_name, input_shape=input_shape)


def variables_from_torch(state_dict_or_path, model: nn.Module, model_name: str, *,
                         input_shape=(1, 32, 32, 3)) -> dict[str, Any]:
  """The variables of an existing `model` (built as `model_name`, e.g. by `models.from_config`) from
  a PyTorch state_dict; see `from_torch`."""
  _require_supported(model_name)
  num_classes = model.num_classes
  state = load_state_dict(state_dict_or_path)
  expected = jax.eval_shape(lambda: models.init_variables(model, jax.random.key(0), tuple(input_shape)))
  plan = _plan(model_name, model, expected, input_shape)

  problems = []
  used = {leaf.torch_key for leaf in plan}
  batchnorms = {leaf.torch_key.rsplit(".", 1)[0] for leaf in plan if leaf.collection == "batch_stats"}
  for key in state:
    module, _, last = key.rpartition(".")
    if key not in used and not (last == "num_batches_tracked" and module in batchnorms):
      problems.append(f"unexpected key {key!r} (shape {tuple(np.shape(state[key]))}): {model_name} has no such "
                      "parameter")
  variables: dict[str, Any] = {}
  for leaf in plan:
    if leaf.torch_key not in state:
      problems.append(f"missing key {leaf.torch_key!r} (expected shape {leaf.torch_shape})")
      continue
    value = state[leaf.torch_key]
    if tuple(value.shape) != leaf.torch_shape:
      problems.append(f"key {leaf.torch_key!r} has shape {tuple(value.shape)}, expected {leaf.torch_shape}"
                      + _hint(model_name, leaf.torch_key, tuple(value.shape), leaf.torch_shape, num_classes))
      continue
    node = variables.setdefault(leaf.collection, {})
    for name in leaf.path[:-1]:
      node = node.setdefault(name, {})
    node[leaf.path[-1]] = leaf.to_flax(np.asarray(value, np.float32))
  if problems:
    raise ValueError(f"the state_dict does not fit {model_name} (num_classes={num_classes}):\n  "
                     + "\n  ".join(problems))
  return jax.tree.map(lambda e, v: jnp.asarray(v, e.dtype), expected, variables)


__all__ = ["SUPPORTED", "from_torch", "load_state_dict", "variables_from_torch"]
