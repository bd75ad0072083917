"""`make_attention(kind, **kwargs)`: an attention module by name, as timm's `create_attn`.

    make_attention("cbam", reduction=8)          # -> CBAM(reduction=8)
    make_attention("region", grid=(4, 4))        # -> RegionAttention(grid=(4, 4))
    make_attention("region", scorer="conv")      # -> RegionAttention(scorer=ConvScorer())
    make_attention("region", scorer="gated", scorer_kwargs={"hidden": 32})
    make_attention(None)                         # -> None (no attention)

Every module returned is called as `module(x, train)` on a `(..., H, W, C)` feature map.
"""

from collections.abc import Mapping

import dataclasses
import functools

import flax.linen as nn

from regionatt_jax.nn.channel import (CBAM, CoordinateAttention, EfficientChannelAttention,
                                      SpatialAttention, SqueezeExcite)
from regionatt_jax.nn.region import MultiScaleRegionAttention, RegionAttention
from regionatt_jax.nn.scorers import (ConvScorer, GatedScorer, MLPScorer, RecurrentScorer,
                                      SelfAttentionScorer)

ATTENTIONS: Mapping[str, type[nn.Module]] = {
    "se": SqueezeExcite,
    "eca": EfficientChannelAttention,
    "spatial": SpatialAttention,
    "cbam": CBAM,
    "coordinate": CoordinateAttention,
    "region": RegionAttention,
    "multiscale": MultiScaleRegionAttention,
}

#: Scorers by name, so that a JSON-able config can choose one (`scorer="gated"`).
SCORERS: Mapping[str, type[nn.Module]] = {
    "conv": ConvScorer,
    "mlp": MLPScorer,
    "gated": GatedScorer,
    "recurrent": RecurrentScorer,
    "self_attention": SelfAttentionScorer,
}


def check_fields(cls: type, kwargs: Mapping, key: str) -> None:
  """Raises `ValueError` naming `<key>.<field>` for each keyword `cls` does not take."""
  fields = {f.name for f in dataclasses.fields(cls) if f.init} - {"parent", "name"}
  unknown = sorted(set(kwargs) - fields)
  if unknown:
    raise ValueError(f"Unknown key '{key}.{unknown[0]}' for {cls.__name__}; it takes "
                     f"{sorted(fields)}.")


def scorer_name(kind: str, kwargs: Mapping, scorer_kwargs: Mapping) -> str | None:
  """The key of `SCORERS` that `kwargs["scorer"]` names for an attention `kind`, or None
  when there is no name to resolve (also shared by `regionatt_jax.nnx.make_attention`).

  Raises:
    ValueError: an unknown name, or `scorer_kwargs` without a name to apply them to.
  """
  name = kwargs.get("scorer")
  if kind not in ("region", "multiscale") or not isinstance(name, str):
    if scorer_kwargs:
      raise ValueError(f"make_attention: scorer_kwargs need a scorer given by name for "
                       f"'region' or 'multiscale', got kind {kind!r}, scorer {name!r}")
    return None
  if name not in SCORERS:
    raise ValueError(f"make_attention: unknown scorer {name!r} for {kind!r}; need one of "
                     f"{sorted(SCORERS)}, a scorer class (multiscale) or instance (region)")
  return name


def _scorer_by_name(kind: str, kwargs: dict) -> dict:
  """Replaces a scorer name in `kwargs` (with its `scorer_kwargs`) by what `kind` takes:
  `RegionAttention` an instance (built with the module's dtypes),
  `MultiScaleRegionAttention` a class (one instance per grid).

  The instance is made with `parent=None`: built inside a parent's compact method it
  would otherwise belong to that parent, and its parameters would sit beside the
  attention module instead of under it as "scorer".
  """
  kwargs = dict(kwargs)
  scorer_kwargs = dict(kwargs.pop("scorer_kwargs", None) or {})
  name = scorer_name(kind, kwargs, scorer_kwargs)
  if name is None:
    return kwargs
  scorer = SCORERS[name]
  check_fields(scorer, scorer_kwargs, "scorer_kwargs")
  if kind == "region":
    dtypes = {k: kwargs[k] for k in ("dtype", "param_dtype") if k in kwargs}
    scorer = scorer(parent=None, **dtypes, **scorer_kwargs)
  elif scorer_kwargs:
    scorer = functools.partial(scorer, **scorer_kwargs)
  return {**kwargs, "scorer": scorer}


def make_attention(kind: str | None, /, **kwargs) -> nn.Module | None:
  """Builds the attention module called `kind`.

  Args:
    kind: a key of `ATTENTIONS` ("se", "eca", "spatial", "cbam", "coordinate", "region",
      "multiscale"), or None / "none" for no attention.
    **kwargs: attributes of that module (e.g. `reduction=16`, `grid=(4, 4)`, `name=...`);
      ignored for None, so callers can pass shared options such as `dtype` uniformly.
      For "region" and "multiscale", `scorer` may be a key of `SCORERS`, with its
      options in `scorer_kwargs` (e.g. `{"hidden": 32}`).

  Returns:
    The unbound module, or None.

  Raises:
    ValueError: unknown `kind` or scorer name.
    TypeError: a keyword the module does not have.
  """
  if kind is None or kind == "none":
    return None
  if kind not in ATTENTIONS:
    raise ValueError(
        f"make_attention: unknown attention kind {kind!r}; need one of "
        f"{sorted(ATTENTIONS)} or None")
  module = ATTENTIONS[kind]
  kwargs = _scorer_by_name(kind, kwargs)
  try:
    return module(**kwargs)
  except TypeError as error:
    raise TypeError(f"make_attention: bad options {sorted(kwargs)} for {kind!r} "
                    f"({module.__name__}): {error}") from None
