"""Starting a model from pretrained backbone weights (fine-tuning).

`merge_pretrained` puts a pretrained backbone into freshly initialized variables of a
model that may have more (attention modules inside the backbone, a region-attention
head, a classifier for other classes), and says which leaves came from where.
`load_pretrained_backbone` does it from a torchvision/timm ResNet file (needs torch).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax.numpy as jnp
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


def load_pretrained_backbone(path: str | os.PathLike, arch: str,
                             variables: Mapping[str, Any]) -> Merged:
  """`merge_pretrained` of the torchvision/timm ResNet saved at `path` (needs torch).

  Args:
    path: a `.pth`/`.pt`/`.safetensors` `state_dict` of a torchvision or timm ResNet.
    arch: the model's backbone ("resnet18", "resnet34", "resnet50", ...); the file must
      hold exactly that architecture.
    variables: the model's freshly initialized variables; its backbone must have the
      "imagenet" stem and torchvision's width.

  Returns:
    See `merge_pretrained`.

  Raises:
    ValueError: an unreadable file, another architecture or a leaf of another shape,
      naming the file and the first offending `state_dict` key.
  """
  from regionatt_jax import pytorch  # pylint: disable=g-import-not-at-top
  _, pretrained = pytorch.from_torchvision(path, arch=arch)
  try:
    return merge_pretrained(variables, pretrained, name=pytorch.torchvision_key)
  except ValueError as error:
    raise ValueError(f"pretrained file {os.fspath(path)!r}: {error}") from None
