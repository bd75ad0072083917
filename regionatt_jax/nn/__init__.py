"""Flax Linen modules for region attention and the attention family around it.

Scorers (`(..., N, h, w, C) -> (..., N)`), `RegionAttention`, `MultiScaleRegionAttention`,
`AttentionPooling`, channel/spatial attention (SE, ECA, spatial, CBAM, coordinate), the
`make_attention` factory, classifiers and `build_model` (config -> classifier), and
`attention_maps` to read sown attention.
See docs/modules.md for usage.
"""

from regionatt_jax.nn.channel import CBAM
from regionatt_jax.nn.channel import CoordinateAttention
from regionatt_jax.nn.channel import eca_kernel_size
from regionatt_jax.nn.channel import EfficientChannelAttention
from regionatt_jax.nn.channel import SpatialAttention
from regionatt_jax.nn.channel import SqueezeExcite
from regionatt_jax.nn.factory import ATTENTIONS
from regionatt_jax.nn.factory import make_attention
from regionatt_jax.nn.factory import SCORERS
from regionatt_jax.nn.maps import ATTENTION_MAP
from regionatt_jax.nn.maps import attention_maps
from regionatt_jax.nn.maps import has_attention_map
from regionatt_jax.nn.maps import INSTANCE_WEIGHTS
from regionatt_jax.nn.maps import instance_weights
from regionatt_jax.nn.maps import REGION_WEIGHTS
from regionatt_jax.nn.maps import topmost
from regionatt_jax.nn.models import AttentionNet
from regionatt_jax.nn.models import BACKBONES
from regionatt_jax.nn.models import BasicBlock
from regionatt_jax.nn.models import Bottleneck
from regionatt_jax.nn.models import build_model
from regionatt_jax.nn.models import MILClassifier
from regionatt_jax.nn.models import MODELS
from regionatt_jax.nn.models import RegionAttentionClassifier
from regionatt_jax.nn.models import ResNet
from regionatt_jax.nn.models import ResNet18
from regionatt_jax.nn.models import ResNet34
from regionatt_jax.nn.models import ResNet50
from regionatt_jax.nn.models import ResNet101
from regionatt_jax.nn.models import ResNet152
from regionatt_jax.nn.models import SmallCNN
from regionatt_jax.nn.pooling import AttentionPooling
from regionatt_jax.nn.region import MultiScaleRegionAttention
from regionatt_jax.nn.region import RegionAttention
from regionatt_jax.nn.scorers import AttentionScore
from regionatt_jax.nn.scorers import ConvScorer
from regionatt_jax.nn.scorers import GatedScorer
from regionatt_jax.nn.scorers import MLPScorer
from regionatt_jax.nn.scorers import pool_regions
from regionatt_jax.nn.scorers import PooledScorer
from regionatt_jax.nn.scorers import RecurrentScorer
from regionatt_jax.nn.scorers import SelfAttentionScorer

__all__ = [
    "ATTENTIONS", "ATTENTION_MAP", "AttentionNet", "AttentionPooling", "AttentionScore",
    "BACKBONES", "BasicBlock", "Bottleneck", "CBAM", "ConvScorer", "CoordinateAttention",
    "EfficientChannelAttention", "GatedScorer", "INSTANCE_WEIGHTS", "MILClassifier",
    "MLPScorer", "MODELS",
    "MultiScaleRegionAttention", "PooledScorer", "REGION_WEIGHTS", "RecurrentScorer",
    "RegionAttention",
    "RegionAttentionClassifier", "ResNet", "ResNet18", "ResNet34", "ResNet50", "ResNet101",
    "ResNet152", "SCORERS",
    "SelfAttentionScorer",
    "SmallCNN", "SpatialAttention", "SqueezeExcite", "attention_maps", "build_model", "eca_kernel_size", "has_attention_map",
    "instance_weights", "make_attention", "pool_regions", "topmost",
]
