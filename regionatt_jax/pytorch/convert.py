"""PyTorch `state_dict` <-> Flax variables, for modules whose submodule names match.

A `state_dict` key `"a.b.weight"` belongs to the Flax module at path `("a", "b")`. The
layout changes are the only logic:

| PyTorch | Flax |
|---|---|
| `Conv2d.weight` `(O, I, kh, kw)` | `params/.../kernel` `(kh, kw, I, O)` |
| `Linear.weight` `(O, I)` | `params/.../kernel` `(I, O)` |
| `*.bias` | `params/.../bias` |
| `BatchNorm2d.weight`, `.bias` | `params/.../scale`, `params/.../bias` |
| `BatchNorm2d.running_mean`, `.running_var` | `batch_stats/.../mean`, `batch_stats/.../var` |
| `BatchNorm2d.num_batches_tracked` | (dropped; 0 on the way back) |

A module is a BatchNorm when its `state_dict` entries include `running_mean`.
"""

from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import numpy as np
import torch

_BATCH_NORM_PARAMS = {"weight": "scale", "bias": "bias"}
_BATCH_NORM_STATS = {"running_mean": "mean", "running_var": "var"}


def _set(tree: dict, path: tuple[str, ...], value) -> None:
  for name in path[:-1]:
    tree = tree.setdefault(name, {})
  tree[path[-1]] = value


def _kernel_to_flax(weight: np.ndarray, key: str) -> np.ndarray:
  if weight.ndim == 4:
    return weight.transpose(2, 3, 1, 0)
  if weight.ndim == 2:
    return weight.T
  raise ValueError(f"state_dict[{key!r}] must be a Conv2d (4-D) or Linear (2-D) weight, "
                   f"got shape {weight.shape}")


def torch_to_flax(state_dict: Mapping[str, torch.Tensor]) -> dict[str, Any]:
  """Converts a PyTorch `state_dict` to Flax variables.

  Args:
    state_dict: from `module.state_dict()` of a module in `regionatt_jax.pytorch.models`
      (or any module built from Conv2d/Linear/BatchNorm2d with Flax submodule names).

  Returns:
    `{"params": ..., "batch_stats": ...}` (no "batch_stats" without BatchNorm), float32
    jax arrays, ready for `flax_module.apply`.
  """
  batch_norms = {key.rsplit(".", 1)[0] for key in state_dict if key.endswith(".running_mean")}
  variables: dict[str, Any] = {}
  for key, tensor in state_dict.items():
    module, name = key.rsplit(".", 1)
    path = tuple(module.split("."))
    value = tensor.detach().cpu().numpy()
    if module in batch_norms:
      if name in _BATCH_NORM_PARAMS:
        _set(variables, ("params", *path, _BATCH_NORM_PARAMS[name]), value)
      elif name in _BATCH_NORM_STATS:
        _set(variables, ("batch_stats", *path, _BATCH_NORM_STATS[name]), value)
      elif name != "num_batches_tracked":
        raise ValueError(f"state_dict[{key!r}]: unknown BatchNorm entry {name!r}")
    elif name == "weight":
      _set(variables, ("params", *path, "kernel"), _kernel_to_flax(value, key))
    elif name == "bias":
      _set(variables, ("params", *path, "bias"), value)
    else:
      raise ValueError(f"state_dict[{key!r}]: need a weight, bias or BatchNorm entry, got {name!r}")
  return _map(variables, jnp.asarray)


def _map(tree, fn):
  return {k: _map(v, fn) for k, v in tree.items()} if isinstance(tree, Mapping) else fn(tree)


def _flatten(tree: Mapping, prefix: tuple[str, ...] = ()):
  for name, value in tree.items():
    if isinstance(value, Mapping):
      yield from _flatten(value, (*prefix, name))
    else:
      yield (*prefix, name), np.asarray(value)


def flax_to_torch(variables: Mapping[str, Any]) -> dict[str, torch.Tensor]:
  """The inverse of `torch_to_flax`: Flax variables -> a `state_dict` for `load_state_dict`.

  Args:
    variables: `{"params": ..., "batch_stats": ...}` of a Flax model whose module names
      match the PyTorch module's.

  Returns:
    A `state_dict` (`num_batches_tracked` is 0: Flax does not count batches).
  """
  stats = dict(_flatten(variables.get("batch_stats", {})))
  batch_norms = {path[:-1] for path in stats}
  state_dict: dict[str, torch.Tensor] = {}
  for path, value in _flatten(variables["params"]):
    module, name = ".".join(path[:-1]), path[-1]
    if path[:-1] in batch_norms:
      torch_name = {"scale": "weight", "bias": "bias"}[name]
    elif name == "kernel":
      torch_name = "weight"
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    else:
      torch_name = name
    state_dict[f"{module}.{torch_name}"] = torch.from_numpy(np.array(value, copy=True))
  for path, value in stats.items():
    module = ".".join(path[:-1])
    torch_name = {"mean": "running_mean", "var": "running_var"}[path[-1]]
    state_dict[f"{module}.{torch_name}"] = torch.from_numpy(np.array(value, copy=True))
    state_dict[f"{module}.num_batches_tracked"] = torch.tensor(0)
  return state_dict
