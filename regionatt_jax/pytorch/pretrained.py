"""torchvision and timm ResNet weights -> the Flax `RegionAttentionClassifier`.

The Flax `ResNet` has torchvision's layout and names, with `_` for `.` before an index
(`layer1.0.downsample.1.weight` is `layer1_0/downsample_1/scale`); the classifier puts
the ResNet under "backbone" and calls `fc` "classifier". timm's ResNets use
torchvision's parameter names, so their `state_dict`s convert the same way.

    import torchvision
    model, variables = from_torchvision(torchvision.models.resnet50(weights="DEFAULT"))
    logits = model.apply(variables, images_nhwc)          # = torchvision's, NHWC input

    model, variables = from_torchvision("resnet50-11ad3fa6.pth")   # a saved state_dict

A `state_dict` that is not such a ResNet raises a `ValueError` naming its source (the
file) and the first key that is missing, mis-shaped or unexpected.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp
import torch

from regionatt_jax.nn import models
from regionatt_jax.pytorch.convert import _BATCH_NORM_PARAMS
from regionatt_jax.pytorch.convert import _BATCH_NORM_STATS
from regionatt_jax.pytorch.convert import _kernel_to_flax

#: Flax leaf name -> torch parameter name, per collection.
_TORCH_NAMES = {
    "params": {"kernel": "weight", **{v: k for k, v in _BATCH_NORM_PARAMS.items()}},
    "batch_stats": {v: k for k, v in _BATCH_NORM_STATS.items()},
}
#: What a checkpoint written by a training script may wrap the `state_dict` in.
_WRAPPER_KEYS = ("state_dict", "model")

Path = str | os.PathLike


def resnet_architectures() -> dict[tuple[tuple[int, ...], type[nn.Module]], str]:
  """`(stage_sizes, block class)` -> the name of that ResNet in `BACKBONES`."""
  return {(tuple(ctor.keywords["stage_sizes"]), ctor.keywords.get("block", models.BasicBlock)):
          name for name, ctor in models.BACKBONES.items()
          if isinstance(ctor, functools.partial) and ctor.func is models.ResNet}


def torchvision_key(collection: str, path: tuple[str, ...]) -> str:
  """The torchvision `state_dict` key of a Flax leaf of a ResNet or ResNet classifier.

  Args:
    collection: "params" or "batch_stats".
    path: the leaf's path in that collection, e.g. `("backbone", "layer1_0", "bn1",
      "scale")`; a leading "backbone" is dropped and "classifier" is `fc`.

  Returns:
    The key, e.g. `"layer1.0.bn1.weight"`.
  """
  *modules, leaf = path
  if modules[:1] == ["backbone"]:
    modules = modules[1:]
  elif modules[:1] == ["classifier"]:
    modules = ["fc", *modules[1:]]
  modules = [re.sub(r"_(\d+)$", r".\1", module) for module in modules]
  return ".".join([*modules, _TORCH_NAMES[collection].get(leaf, leaf)])


def _torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The shape of a torch weight whose Flax kernel has `flax_shape` (see `_kernel_to_flax`)."""
  if len(flax_shape) == 4:
    return (flax_shape[3], flax_shape[2], flax_shape[0], flax_shape[1])
  return tuple(reversed(flax_shape))


def _unwrap(loaded: Any, source: str) -> Mapping[str, torch.Tensor]:
  """The `state_dict` in what `torch.load` returned (possibly `{"state_dict": ...}`)."""
  for key in _WRAPPER_KEYS:
    if isinstance(loaded, Mapping) and isinstance(loaded.get(key), Mapping):
      loaded = loaded[key]
  if not isinstance(loaded, Mapping):
    raise ValueError(f"{source}: need a state_dict (a mapping of names to tensors), got "
                     f"{type(loaded).__name__}")
  for key, value in loaded.items():
    if not isinstance(value, torch.Tensor):
      raise ValueError(f"{source}: entry {key!r} is a {type(value).__name__}, not a tensor; "
                       f"need a state_dict")
  return loaded


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
  """Reads a `state_dict` saved with safetensors (`.safetensors`) or `torch.save` (other
  names, usually `.pth` or `.pt`).

  Args:
    path: the file (`~` is expanded). A `torch.save` checkpoint of
      `{"state_dict": ...}` or `{"model": ...}` gives the mapping inside.

  Returns:
    The `state_dict`, CPU tensors.

  Raises:
    ValueError: a missing, unreadable (e.g. truncated) or non-`state_dict` file, naming it.
  """
  path = os.path.expanduser(os.fspath(path))
  if not os.path.isfile(path):
    raise ValueError(f"pretrained file {path!r} does not exist")
  try:
    if path.endswith(".safetensors"):
      from safetensors.torch import load_file  # pylint: disable=g-import-not-at-top
      loaded = load_file(path, device="cpu")
    else:
      loaded = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as error:  # torch and safetensors raise many kinds on a damaged file.
    raise ValueError(f"pretrained file {path!r} cannot be read as a state_dict "
                     f"({type(error).__name__}: {error})") from error
  return dict(_unwrap(loaded, f"pretrained file {path!r}"))


def _state_dict(model_or_state_dict) -> tuple[Mapping[str, torch.Tensor], str]:
  """The `state_dict` of a module, mapping or file, and how errors name it."""
  if isinstance(model_or_state_dict, (str, os.PathLike)):
    path = os.fspath(model_or_state_dict)
    return load_state_dict(path), f"pretrained file {path!r}"
  if isinstance(model_or_state_dict, torch.nn.Module):
    name = type(model_or_state_dict).__name__
    return model_or_state_dict.state_dict(), f"state_dict of {name}"
  return _unwrap(model_or_state_dict, "model_or_state_dict"), "state_dict"


def _architecture(state_dict: Mapping[str, torch.Tensor], source: str) -> str:
  """The `BACKBONES` name of the ResNet whose blocks `state_dict` holds."""
  stage_sizes = tuple(
      len({key.split(".")[1] for key in state_dict if key.startswith(f"layer{stage}.")})
      for stage in range(1, 5))
  block = models.Bottleneck if "layer1.0.conv3.weight" in state_dict else models.BasicBlock
  architectures = resnet_architectures()
  if (stage_sizes, block) in architectures:
    return architectures[stage_sizes, block]
  foreign = [key for key in state_dict
             if not re.match(r"(conv1|bn1|layer[1-4]\.\d+|fc)\.", key)]
  found = (f"its first key that no ResNet has is {foreign[0]!r}" if foreign else
           f"its stages hold {stage_sizes} {block.__name__} blocks")
  raise ValueError(f"{source} is not a torchvision/timm ResNet of {sorted(architectures.values())}: "
                   f"{found}; pass arch= to name the architecture it should be")


def from_torchvision(model_or_state_dict, arch: str | None = None
                     ) -> tuple[models.RegionAttentionClassifier, dict[str, Any]]:
  """Converts a torchvision or timm ResNet (18/34/50/101/152) to the Flax classifier.

  Conv kernels go from `(O, I, kh, kw)` to `(kh, kw, I, O)`, the `fc` weight is
  transposed, BatchNorm weight/bias become scale/bias and its running statistics
  `batch_stats`; `num_batches_tracked` is dropped.

  Args:
    model_or_state_dict: a `torchvision.models.resnet*()` or `timm.create_model("resnet*")`
      module, its `state_dict()`, or the path of one saved as `.pth`/`.pt`/`.safetensors`.
    arch: a ResNet key of `regionatt_jax.nn.BACKBONES` ("resnet18", ...); default: read
      from the blocks of the `state_dict`.

  Returns:
    `(model, variables)`: `RegionAttentionClassifier(num_classes, backbone=arch,
    backbone_kwargs={"stem": "imagenet"}, head=None)`, which computes torchvision's
    logits from NHWC images, and its `{"params": ..., "batch_stats": ...}` (float32).

  Raises:
    ValueError: an unreadable file, or a `state_dict` that lacks a key the architecture
      has, has it in another shape, or has a key it lacks; the message names the source
      and the first such key.
  """
  state_dict, source = _state_dict(model_or_state_dict)
  architectures = resnet_architectures()
  if arch is None:
    arch = _architecture(state_dict, source)
  elif arch not in architectures.values():
    raise ValueError(f"arch must be one of {sorted(architectures.values())}, got {arch!r}")
  for key in ("conv1.weight", "fc.weight"):  # They give the input and output sizes.
    if key not in state_dict:
      raise ValueError(f"{source} has no key {key!r}, which a torchvision {arch} has")
  num_classes, in_channels = state_dict["fc.weight"].shape[0], state_dict["conv1.weight"].shape[1]
  model = models.RegionAttentionClassifier(num_classes, backbone=arch, head=None,
                                           backbone_kwargs={"stem": "imagenet"})
  expected = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 64, 64, in_channels), jnp.float32))
  # Parameters before statistics, so that a missing block is named by a parameter.
  leaves = sorted(traverse_util.flatten_dict(expected).items(), key=lambda kv: kv[0][0] != "params")
  expected_by_key = {torchvision_key(collection, tuple(path)): ((collection, *path), leaf)
                     for (collection, *path), leaf in leaves}
  flat: dict[tuple[str, ...], jax.Array] = {}
  for key, tensor in state_dict.items():  # In the file's order: the first offence is named.
    if key.endswith(".num_batches_tracked"):
      continue
    if key not in expected_by_key:
      raise ValueError(f"{source} has a key a torchvision {arch} lacks: {key!r}")
    path, leaf = expected_by_key[key]
    value = tensor.detach().cpu().numpy()
    if path[-1] == "kernel":
      value = _kernel_to_flax(value, key)
    if value.shape != leaf.shape:
      raise ValueError(
          f"{source}: {key!r} has shape {tuple(tensor.shape)}, a torchvision {arch} needs "
          f"{_torch_shape(leaf.shape) if path[-1] == 'kernel' else leaf.shape}")
    flat[path] = jnp.asarray(value, leaf.dtype)
  missing = [key for key in expected_by_key if key not in state_dict]
  if missing:
    raise ValueError(f"{source} has no key {missing[0]!r}, which a torchvision {arch} has")
  return model, traverse_util.unflatten_dict(flat)
