"""`make_attention(kind, **kwargs)`: an attention module by name, as timm's `create_attn`.

    make_attention("cbam", reduction=8)          # -> CBAM(reduction=8)
    make_attention("region", grid=(4, 4))        # -> RegionAttention(grid=(4, 4))
    make_attention(None)                         # -> None (no attention)

Every module returned is called as `module(x, train)` on a `(..., H, W, C)` feature map.
"""

from collections.abc import Mapping

import flax.linen as nn

from regionatt_jax.nn.channel import (CBAM, CoordinateAttention, EfficientChannelAttention,
                                      SpatialAttention, SqueezeExcite)
from regionatt_jax.nn.region import MultiScaleRegionAttention, RegionAttention

ATTENTIONS: Mapping[str, type[nn.Module]] = {
    "se": SqueezeExcite,
    "eca": EfficientChannelAttention,
    "spatial": SpatialAttention,
    "cbam": CBAM,
    "coordinate": CoordinateAttention,
    "region": RegionAttention,
    "multiscale": MultiScaleRegionAttention,
}


def make_attention(kind: str | None, /, **kwargs) -> nn.Module | None:
  """Builds the attention module called `kind`.

  Args:
    kind: a key of `ATTENTIONS` ("se", "eca", "spatial", "cbam", "coordinate", "region",
      "multiscale"), or None / "none" for no attention.
    **kwargs: attributes of that module (e.g. `reduction=16`, `grid=(4, 4)`, `name=...`);
      ignored for None, so callers can pass shared options such as `dtype` uniformly.

  Returns:
    The unbound module, or None.

  Raises:
    ValueError: unknown `kind`.
    TypeError: a keyword the module does not have.
  """
  if kind is None or kind == "none":
    return None
  if kind not in ATTENTIONS:
    raise ValueError(
        f"make_attention: unknown attention kind {kind!r}; need one of "
        f"{sorted(ATTENTIONS)} or None")
  module = ATTENTIONS[kind]
  try:
    return module(**kwargs)
  except TypeError as error:
    raise TypeError(f"make_attention: bad options {sorted(kwargs)} for {kind!r} "
                    f"({module.__name__}): {error}") from None
