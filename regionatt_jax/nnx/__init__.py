"""Flax NNX twins of the modules and models of `regionatt_jax.nn`.

Each class is a plain `nnx.Module` built eagerly from its input width (`in_features`
first, then the Linen twin's attributes as arguments, and `rngs`), with the same
parameter names, the same equations (`regionatt_jax.nn.functional`) and so the same
outputs. `from_linen(module, variables)` and `to_linen_variables(model)` convert between
the two. Attention maps are sown as `nnx.Intermediate` while `nnx.capture` records:

    logits, state = nnx.capture(model, nnx.Intermediate)(images, train=False)
    maps = regionatt_jax.nnx.attention_maps(state, images.shape[-3:-1])

See docs/nnx.md. This subpackage imports `flax.nnx`; `regionatt_jax` and
`regionatt_jax.nn` do not.
"""

from flax import nnx as _nnx

from regionatt_jax.nn import maps as _maps
from regionatt_jax.nnx.attention import ATTENTIONS
from regionatt_jax.nnx.attention import AttentionPooling
from regionatt_jax.nnx.attention import AttentionScore
from regionatt_jax.nnx.attention import CBAM
from regionatt_jax.nnx.attention import ConvScorer
from regionatt_jax.nnx.attention import CoordinateAttention
from regionatt_jax.nnx.attention import EfficientChannelAttention
from regionatt_jax.nnx.attention import GatedScorer
from regionatt_jax.nnx.attention import make_attention
from regionatt_jax.nnx.attention import MLPScorer
from regionatt_jax.nnx.attention import MultiScaleRegionAttention
from regionatt_jax.nnx.attention import PooledScorer
from regionatt_jax.nnx.attention import RecurrentScorer
from regionatt_jax.nnx.attention import RegionAttention
from regionatt_jax.nnx.attention import SCORERS
from regionatt_jax.nnx.attention import SelfAttentionScorer
from regionatt_jax.nnx.attention import SpatialAttention
from regionatt_jax.nnx.attention import SqueezeExcite
from regionatt_jax.nnx.convert import from_linen
from regionatt_jax.nnx.convert import to_linen_variables
from regionatt_jax.nnx.layers import Conv
from regionatt_jax.nnx.models import AttentionNet
from regionatt_jax.nnx.models import BACKBONES
from regionatt_jax.nnx.models import BasicBlock
from regionatt_jax.nnx.models import Bottleneck
from regionatt_jax.nnx.models import MILClassifier
from regionatt_jax.nnx.models import RegionAttentionClassifier
from regionatt_jax.nnx.models import ResNet
from regionatt_jax.nnx.models import ResNet18
from regionatt_jax.nnx.models import ResNet34
from regionatt_jax.nnx.models import ResNet50
from regionatt_jax.nnx.models import ResNet101
from regionatt_jax.nnx.models import ResNet152
from regionatt_jax.nnx.models import SmallCNN


def intermediates(state) -> dict:
  """The `nnx.Intermediate` state from `nnx.capture` as the nested dict of tuples that
  Linen's `apply(..., mutable=["intermediates"])` returns (what `regionatt_jax.nn`'s
  readers take)."""
  return state.to_pure_dict() if isinstance(state, _nnx.State) else dict(state)


def attention_maps(state, image_shape, *, method: str = "nearest"):
  """`regionatt_jax.nn.attention_maps` of the state `nnx.capture` returned: `(..., H, W)`."""
  return _maps.attention_maps(intermediates(state), image_shape, method=method)


def instance_weights(state):
  """`regionatt_jax.nn.instance_weights` of the state `nnx.capture` returned: `(..., N)`."""
  return _maps.instance_weights(intermediates(state))


__all__ = [
    "ATTENTIONS", "AttentionNet", "AttentionPooling", "AttentionScore", "BACKBONES",
    "BasicBlock", "Bottleneck", "CBAM",
    "Conv", "ConvScorer", "CoordinateAttention", "EfficientChannelAttention", "GatedScorer",
    "MILClassifier", "MLPScorer", "MultiScaleRegionAttention", "PooledScorer",
    "RecurrentScorer",
    "RegionAttention", "RegionAttentionClassifier", "ResNet", "ResNet18", "ResNet34",
    "ResNet50", "ResNet101", "ResNet152",
    "SCORERS", "SelfAttentionScorer", "SmallCNN", "SpatialAttention", "SqueezeExcite",
    "attention_maps", "from_linen", "instance_weights", "intermediates", "make_attention",
    "to_linen_variables",
]
