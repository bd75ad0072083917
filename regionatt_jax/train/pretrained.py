"""Starting a model from pretrained backbone weights (fine-tuning).

`merge_pretrained` puts a pretrained backbone into freshly initialized variables of a
model that may have more (attention modules inside the backbone, a region-attention
head, a classifier for other classes), and says which leaves came from where.
`load_pretrained_backbone` reads the backbone of a torchvision/timm ResNet file (needs
torch) for a model; `create_train_state` merges it when `config.model.pretrained` is set.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from absl import logging
from flax import traverse_util


class Merged(NamedTuple):
  """What `merge_pretrained` returns.

  Attributes:
    variables: the model's variables with the pretrained leaves in place.
    loaded: `"collection/path/to/leaf"` of each leaf taken from the pretrained weights.
    new: the same of each leaf kept as initialized.
  """
  variables: dict[str, Any]
  loaded: list[str]
  new: list[str]


def _slash(collection: str, path: tuple[str, ...]) -> str:
  """`"params/backbone/conv1/kernel"`."""
  return "/".join((collection, *path))


def merge_pretrained(variables: Mapping[str, Any], pretrained: Mapping[str, Any], *,
                     subtree: str = "backbone",
                     name: Callable[[str, tuple[str, ...]], str] = _slash) -> Merged:
  """Replaces the leaves under `subtree` of `variables` by those of `pretrained`.

  Args:
    variables: `{"params": ..., "batch_stats": ...}` of the model, freshly initialized.
    pretrained: variables with the same module names under `subtree` (e.g. from
      `regionatt_jax.pytorch.from_torchvision`); what lies outside `subtree` (the
      pretrained classifier) is not used.
    subtree: the top-level module to load, in every collection.
    name: how an error names a leaf, from its collection and path (e.g.
      `regionatt_jax.pytorch.torchvision_key`).

  Returns:
    The merged variables (each pretrained leaf cast to the model's dtype) and the
    loaded and new leaf names.

  Raises:
    ValueError: a pretrained leaf under `subtree` that the model lacks or has in
      another shape, naming the first one.
  """
  flat = traverse_util.flatten_dict(dict(variables))
  loaded: list[tuple[str, ...]] = []
  for (collection, *path), value in traverse_util.flatten_dict(dict(pretrained)).items():
    path = tuple(path)
    if path[0] != subtree:
      continue
    target = flat.get((collection, *path))
    if target is None:
      raise ValueError(f"pretrained {name(collection, path)!r} has no place in the model "
                       f"(no {_slash(collection, path)}): another architecture?")
    if target.shape != value.shape:
      raise ValueError(f"pretrained {name(collection, path)!r} has shape {value.shape}, the "
                       f"model's {_slash(collection, path)} has {target.shape} (Flax layout)")
    flat[(collection, *path)] = jnp.asarray(value, target.dtype)
    loaded.append((collection, *path))
  new = flat.keys() - set(loaded)
  return Merged(traverse_util.unflatten_dict(flat), ["/".join(key) for key in loaded],
                ["/".join(key) for key in flat if key in new])


def load_pretrained_backbone(path: str | os.PathLike, model: nn.Module,
                             input_shape: Sequence[int]) -> tuple[dict[str, Any], Merged]:
  """The backbone of the torchvision/timm ResNet saved at `path`, checked against `model`.

  Reads and converts the file (needs torch), checks that its backbone fits `model`'s
  (by shapes only, without initializing `model`), and logs which leaves it fills and
  which stay as initialized.

  Args:
    path: a `.pth`/`.pt`/`.safetensors` `state_dict` of a torchvision or timm ResNet.
    model: a model with a ResNet `backbone` ("resnet18", "resnet34", "resnet50", ...)
      with the "imagenet" stem and torchvision's width; the file must hold exactly that
      architecture.
    input_shape: `(B, H, W, C)` of the model's input.

  Returns:
    `(pretrained, merged)`: the file's backbone as variables
    (`{"params": {"backbone": ...}, "batch_stats": {"backbone": ...}}`) for
    `merge_pretrained(variables, pretrained)` after `model.init`, and that merge done on
    shapes, whose `loaded` and `new` name the leaves.

  Raises:
    ValueError: a model without a ResNet backbone, an unreadable file, another
      architecture or a leaf of another shape, naming the file and the first offending
      `state_dict` key.
  """
  from regionatt_jax import pytorch  # pylint: disable=g-import-not-at-top
  from regionatt_jax.pytorch import pretrained as torch_pretrained  # pylint: disable=g-import-not-at-top
  path = os.fspath(path)
  arch = getattr(model, "backbone", None)
  if arch not in torch_pretrained.resnet_architectures().values():
    raise ValueError(f"Config key 'model.pretrained' ({path!r}) needs a model with a ResNet "
                     f"backbone ({sorted(torch_pretrained.resnet_architectures().values())}); "
                     f"{type(model).__name__} has backbone {arch!r}.")
  _, converted = pytorch.from_torchvision(path, arch=arch)
  pretrained = {collection: {"backbone": tree["backbone"]}
                for collection, tree in converted.items()}
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct(tuple(input_shape), jnp.float32))
  try:
    merged = merge_pretrained(shapes, pretrained, name=pytorch.torchvision_key)
  except ValueError as error:
    raise ValueError(f"pretrained file {path!r}: {error}") from None
  logging.warning("Pretrained backbone %s (%s): %d leaves loaded, %d new: %s", path, arch,
                  len(merged.loaded), len(merged.new), ", ".join(merged.new))
  logging.info("Leaves loaded from %s: %s", path, ", ".join(merged.loaded))
  return pretrained, merged
