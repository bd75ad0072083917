"""`make_attention(kind, **kwargs)`: an attention module by name, as timm's `create_attn`.

    make_attention("cbam", reduction=8)          # -> CBAM(reduction=8)
    make_attention("region", grid=(4, 4))        # -> RegionAttention(grid=(4, 4))
    make_attention("region", grid=(4, 4), scorer="conv")  # scorer=ConvScorer()
    make_attention("region", grid=(4, 4), scorer="gated", scorer_kwargs={"hidden": 32})
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


def _fields(cls: type) -> set[str]:
  """The attributes a module class takes as keywords (`name` included, `parent` not)."""
  return {f.name for f in dataclasses.fields(cls) if f.init} - {"parent"}


def check_fields(cls: type, kwargs: Mapping, key: str) -> None:
  """Raises `ValueError` naming `<key>.<field>` for each keyword `cls` does not take."""
  fields = _fields(cls) - {"name"}
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


def check_kind(kind, name: str) -> None:
  """Checks that `kind` names an attention module: a key of `ATTENTIONS`, "none" or None."""
  if kind is None:
    return
  if not isinstance(kind, str):
    raise TypeError(f"{name} must be a str (a key of ATTENTIONS) or None, got "
                    f"{type(kind).__name__} {kind!r}")
  if kind != "none" and kind not in ATTENTIONS:
    raise ValueError(f"{name}: unknown attention kind {kind!r}; need one of "
                     f"{sorted(ATTENTIONS)} or None")


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
    ValueError: unknown `kind` or scorer name, or a bad option value.
    TypeError: a `kind` that is not a str, a keyword the module does not have, or an
      option of the wrong type.
  """
  if kind is None:
    return None
  check_kind(kind, "make_attention: kind")
  if kind == "none":
    return None
  module = ATTENTIONS[kind]
  kwargs = _scorer_by_name(kind, kwargs)
  options = _fields(module)
  if unknown := sorted(set(kwargs) - options):
    raise TypeError(f"make_attention: bad options {unknown} for {kind!r} "
                    f"({module.__name__}); it takes {sorted(options)}")
  return module(**kwargs)
