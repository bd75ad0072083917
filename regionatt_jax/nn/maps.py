"""Reading the attention that modules `sow` into the 'intermediates' collection.

Names sown (each a tuple with one entry per call, as `flax.linen.Module.sow` stores them):

- `attention_map`: `(..., h, w)` spatial attention at the resolution of the module's
  input, sown by `RegionAttention` (region weights painted onto its input),
  `MultiScaleRegionAttention` (the fused per-pixel gain or the finest weights),
  `SpatialAttention` (and so `CBAM`), and `AttentionNet` (its sigmoid map).
- `region_weights`: `(..., N)` region weights of `RegionAttention`.
- `instance_weights`: `(..., N)` instance weights of `AttentionPooling`.

Usage::

    logits, state = model.apply(variables, images, train=False, mutable=["intermediates"])
    maps = attention_maps(state, images.shape[-3:-1])        # (B, H, W)
"""

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from regionatt_jax import _checks

#: `method`s of `attention_maps` (those of `jax.image.resize`).
RESIZE_METHODS = ("nearest", "linear", "bilinear", "trilinear", "triangle", "cubic",
                  "bicubic", "tricubic", "lanczos3", "lanczos5")

ATTENTION_MAP = "attention_map"
REGION_WEIGHTS = "region_weights"
INSTANCE_WEIGHTS = "instance_weights"


def _found(tree, name: str, depth: int = 0):
  """Yields `(depth, last sown value)` for every `name` entry in a nested mapping."""
  for key, value in tree.items():
    if key == name:
      yield depth, value[-1] if isinstance(value, tuple) else value
    elif isinstance(value, Mapping):
      yield from _found(value, name, depth + 1)


def topmost(variables_or_intermediates, name: str) -> list[jax.Array]:
  """The values sown as `name` by the modules nearest the top of the module tree.

  Args:
    variables_or_intermediates: the mutable state returned by `apply(...,
      mutable=["intermediates"])` (a dict with an 'intermediates' key), or the
      'intermediates' collection itself.
    name: the sown name, e.g. `ATTENTION_MAP`.

  Returns:
    The last value each of those modules sowed (a model whose head attends sows nearer
    the top than the attention inside its backbone, so the head wins).

  Raises:
    ValueError: nothing was sown under `name`.
  """
  tree = variables_or_intermediates
  if not isinstance(tree, Mapping):
    raise TypeError(
        f"variables_or_intermediates must be a mapping (the state returned by apply(..., "
        f"mutable=['intermediates'])), got {type(tree).__name__}")
  tree = tree.get("intermediates", tree)
  found = list(_found(tree, name))
  if not found:
    raise ValueError(
        f"nothing was sown as {name!r} in variables_or_intermediates (top-level keys "
        f"{sorted(tree)}); apply the model with mutable=['intermediates'] and use a model "
        f"that has an attention map (see regionatt_jax.nn.maps)")
  top = min(depth for depth, _ in found)
  return [value for depth, value in found if depth == top]


def has_attention_map(variables_or_intermediates) -> bool:
  """Whether anything sowed an `attention_map` (False for a plain or channel-attention CNN)."""
  tree = variables_or_intermediates
  return any(True for _ in _found(tree.get("intermediates", tree), ATTENTION_MAP))


def attention_maps(variables_or_intermediates, image_shape, *,
                   method: str = "nearest") -> jax.Array:
  """The model's spatial attention map at image resolution, for visualisation and the
  pointing game.

  Takes the `attention_map` sown nearest the top of the module tree (the region head of
  a `RegionAttentionClassifier`, not the CBAMs inside its backbone; averaged if several
  sit at that depth), resizes it from its feature-map resolution to `image_shape`, and
  returns it in float32. Region maps are piecewise constant; "nearest" keeps them so when
  the image size is a multiple of the feature-map size.

  Args:
    variables_or_intermediates: what `apply(..., mutable=["intermediates"])` returned as
      its second output, or its 'intermediates' entry.
    image_shape: `(H, W)` of the input images.
    method: `jax.image.resize` method.

  Returns:
    `(..., H, W)` float32 map, e.g. `(B, H, W)` for a batch of images.
  """
  height, width = _checks.int_pair(image_shape, "image_shape")
  _checks.choice(method, "method", RESIZE_METHODS)
  maps = [jax.image.resize(m.astype(jnp.float32), m.shape[:-2] + (height, width), method)
          for m in topmost(variables_or_intermediates, ATTENTION_MAP)]
  return sum(maps[1:], maps[0]) / len(maps)


def instance_weights(variables_or_intermediates) -> jax.Array:
  """The `(..., N)` instance weights sown by the top-most `AttentionPooling` (MIL)."""
  return topmost(variables_or_intermediates, INSTANCE_WEIGHTS)[0]
