"""Linen <-> NNX: `from_linen(module, variables)` and `to_linen_variables(model)`.

The NNX twins name their parameters and batch statistics as the Linen modules do, so a
Linen variable tree and an NNX state hold the same nested names and shapes; converting is
building the twin with the Linen module's attributes (input widths read off the
parameter shapes) and copying the arrays in.
"""

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from regionatt_jax import nn as linen
from regionatt_jax.nn import conv as linen_conv
from regionatt_jax.nnx import attention, layers, models

#: Linen module class -> NNX twin class.
TWINS: Mapping[type, type[nnx.Module]] = {
    linen.AttentionScore: attention.AttentionScore,
    linen.MLPScorer: attention.MLPScorer,
    linen.GatedScorer: attention.GatedScorer,
    linen.ConvScorer: attention.ConvScorer,
    linen.RecurrentScorer: attention.RecurrentScorer,
    linen.SelfAttentionScorer: attention.SelfAttentionScorer,
    linen.RegionAttention: attention.RegionAttention,
    linen.MultiScaleRegionAttention: attention.MultiScaleRegionAttention,
    linen.AttentionPooling: attention.AttentionPooling,
    linen.SqueezeExcite: attention.SqueezeExcite,
    linen.EfficientChannelAttention: attention.EfficientChannelAttention,
    linen.SpatialAttention: attention.SpatialAttention,
    linen.CBAM: attention.CBAM,
    linen.CoordinateAttention: attention.CoordinateAttention,
    linen.AttentionNet: models.AttentionNet,
    linen.SmallCNN: models.SmallCNN,
    linen.ResNet: models.ResNet,
    linen.models.BasicBlock: models.BasicBlock,
    linen.models.Bottleneck: models.Bottleneck,
    linen.RegionAttentionClassifier: models.RegionAttentionClassifier,
    linen.MILClassifier: models.MILClassifier,
    linen_conv.Conv: layers.Conv,
    nn.Conv: nnx.Conv,
}


def _kernel_in(params, *path, axis: int = 0) -> int:
  for key in path:
    params = params[key]
  return params["kernel"].shape[axis]


def _pool_factor(module) -> int:
  return 2 if module.pool == "meanmax" else 1


def _first(params, *names) -> str:
  return next(name for name in names if name in params)


def _in_features(module: nn.Module, params) -> int | None:
  """The input width of a Linen module, read off its parameters."""
  kind = type(module)
  if kind is linen.AttentionScore:
    return _kernel_in(params, "V")
  if kind is linen.MLPScorer:
    return _kernel_in(params, _first(params, "hidden_0", "out")) // _pool_factor(module)
  if kind is linen.GatedScorer:
    return _kernel_in(params, "attention", "V") // _pool_factor(module)
  if kind is linen.ConvScorer:
    return (_kernel_in(params, "conv_0", axis=2) if "conv_0" in params
            else _kernel_in(params, "out"))
  if kind is linen.RecurrentScorer:
    cell = params[next(name for name in params if name != "out")]
    return _kernel_in(cell, _first(cell, "ir", "ii")) // _pool_factor(module)
  if kind is linen.SelfAttentionScorer:
    return _kernel_in(params, "embed") // _pool_factor(module)
  if kind is linen.RegionAttention:
    return _in_features(_scorer_of(module), params["scorer"])
  if kind is linen.MultiScaleRegionAttention:
    return _in_features(_scorer_of(module), params["scorer_0"])
  if kind is linen.AttentionPooling:
    return _kernel_in(params, "score", "V") if "score" in params else None
  if kind in (linen.SqueezeExcite, linen.CBAM):
    return _kernel_in(params, "mlp", "reduce")
  if kind in (linen.EfficientChannelAttention, linen.SpatialAttention):
    return None
  if kind is linen.CoordinateAttention:
    return _kernel_in(params, "conv_shared")
  if kind is linen.AttentionNet:
    return _kernel_in(params, _first(params, "conv_0", "attention"), axis=2)
  if kind in (linen.SmallCNN, linen.ResNet):
    return _backbone_in(params)
  if kind is linen.RegionAttentionClassifier:
    return _backbone_in(params["backbone"])
  if kind is linen.MILClassifier:
    return _kernel_in(params, "instance_cnn", "conv_0", axis=2)
  raise TypeError(f"from_linen: no NNX twin for {kind.__name__}; need one of "
                  f"{sorted(k.__name__ for k in TWINS)}")


def _backbone_in(params) -> int:
  """The image channels of a backbone: the input width of its first conv (`conv_0` of a
  SmallCNN, `block_0/conv1` of a residual one, `conv1` of a ResNet)."""
  if "block_0" in params:
    params = params["block_0"]
  return _kernel_in(params, _first(params, "conv_0", "conv1"), axis=2)


def _scorer_of(module) -> nn.Module:
  """The (unbound) Linen scorer of a region-attention module."""
  dtypes = dict(dtype=module.dtype, param_dtype=module.param_dtype)
  if isinstance(module, linen.RegionAttention):
    return module.scorer if module.scorer is not None else linen.MLPScorer(parent=None, **dtypes)
  return module.scorer(parent=None, **dtypes)


def _twin_class(value) -> Callable[..., nnx.Module]:
  """The NNX twin of a Linen class or `functools.partial` of one."""
  if isinstance(value, functools.partial):
    return functools.partial(_twin_class(value.func), *value.args,
                             **{k: _convert(v) for k, v in value.keywords.items()})
  if value not in TWINS:
    raise TypeError(f"from_linen: no NNX twin for {getattr(value, '__name__', value)!r}")
  return TWINS[value]


def _convert(value, params=None):
  """An attribute of a Linen module as its NNX twin takes it."""
  if isinstance(value, nn.Module):
    return _twin(value, params)
  if isinstance(value, functools.partial) or (isinstance(value, type)
                                              and issubclass(value, nn.Module)):
    return _twin_class(value)
  return value


def _fields(module: nn.Module) -> dict[str, Any]:
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
          if f.name not in ("parent", "name")}


def _twin(module: nn.Module, params) -> nnx.Module:
  """The NNX twin of `module` with abstract parameters of its shapes."""
  kind = type(module)
  in_features = _in_features(module, params)
  fields = _fields(module)
  if kind is linen.RegionAttention:
    fields["scorer"] = _twin(_scorer_of(module), params["scorer"])
  elif kind is linen.EfficientChannelAttention:
    fields["kernel_size"] = _kernel_in(params, "conv")
  elif kind is linen.SelfAttentionScorer and module.position_embeddings:
    fields["num_regions"] = params["positions"].shape[0]
  elif kind is linen.RegionAttentionClassifier:
    fields["head_kwargs"] = _head_kwargs(module, params)
  if isinstance((fields.get("attention_kwargs") or {}).get("scorer"), nn.Module):
    raise TypeError("from_linen: a per-stage attention whose scorer is a module instance has "
                    "no NNX twin (each stage needs its own); name the scorer instead")
  fields = {name: (value if name in ("head_kwargs", "attention_kwargs") else _convert(value))
            for name, value in fields.items()}
  # Abstract parameters: the arrays come from the Linen variables, so draw none.
  return nnx.eval_shape(lambda: TWINS[kind](in_features, **fields, rngs=nnx.Rngs(0)))


def _head_kwargs(module: nn.Module, params):
  """A classifier's `head_kwargs` with the scorer as the NNX head takes it: the twin of the
  Linen head's scorer instance (a region head) or the twin class (a multiscale head)."""
  head_kwargs = dict(module.head_kwargs or {})
  if module.head == "region":
    head = linen.make_attention("region", dtype=module.dtype, param_dtype=module.param_dtype,
                                **{**linen.models.HEAD_DEFAULTS["region"], **head_kwargs})
    head_kwargs.pop("scorer_kwargs", None)  # they built the scorer instance
    head_kwargs["scorer"] = _twin(_scorer_of(head), params["head"]["scorer"])
  elif not isinstance(head_kwargs.get("scorer", ""), str):
    head_kwargs["scorer"] = _twin_class(head_kwargs["scorer"])
  return head_kwargs


def _shapes(tree):
  return jax.tree.map(lambda a: (tuple(a.shape), jnp.dtype(a.dtype)), tree)


def _load(model: nnx.Module, variables: Mapping[str, Any]) -> None:
  """Copies a Linen variable tree into `model`'s `nnx.Param`s and `nnx.BatchStat`s."""
  for collection, variable_type in (("params", nnx.Param), ("batch_stats", nnx.BatchStat)):
    state = nnx.state(model, variable_type)
    given = jax.tree.map(jnp.asarray, variables.get(collection, {}))
    expected = state.to_pure_dict()
    if _shapes(given) != _shapes(expected):
      raise ValueError(
          f"from_linen: variables[{collection!r}] do not match the NNX twin's; "
          f"need {_shapes(expected)}, got {_shapes(given)}")
    state.replace_by_pure_dict(given)
    nnx.update(model, state)


def from_linen(module: nn.Module, variables: Mapping[str, Any]) -> nnx.Module:
  """The NNX twin of a Linen module, holding the given parameters and batch statistics.

  Args:
    module: a Linen module of `regionatt_jax.nn` (unbound; scorers given as instances,
      classes, partials or names are converted too).
    variables: its variables, `{"params": ..., "batch_stats": ...}` (e.g. from `init`,
      a training checkpoint or `regionatt_jax.train.load`).

  Returns:
    An `nnx.Module` whose call computes what `module.apply(variables, ...)` computes.

  Raises:
    TypeError: a module (or scorer) without an NNX twin.
    ValueError: variables whose names or shapes are not the module's.
  """
  variables = flax.core.unfreeze(variables)
  model = _twin(module, variables.get("params", {}))
  _load(model, variables)
  return model


def to_linen_variables(model: nnx.Module) -> dict[str, Any]:
  """The Linen variables `{"params": ..., "batch_stats": ...}` of an NNX twin.

  As in Linen's `init`, a collection is present only if the model has variables in it.
  """
  collections = {"params": nnx.Param, "batch_stats": nnx.BatchStat}
  variables = {name: nnx.state(model, kind).to_pure_dict()
               for name, kind in collections.items()}
  return {name: tree for name, tree in variables.items() if tree}
