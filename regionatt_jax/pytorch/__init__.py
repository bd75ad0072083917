"""The PyTorch version of the library's networks, and weight conversion to and from Flax.

Importing this subpackage imports torch (`pip install regionatt_jax[torch]`, pinned to
`torch==2.13.0`); `import regionatt_jax` never does. Used by the parity tests
(`tests/test_pytorch_parity.py`) and the benchmark (`experiments/benchmark.py`).

    from regionatt_jax import nn as ra_nn, pytorch as ra_torch
    torch_model = ra_torch.AttentionNet(num_classes=10)
    variables = ra_torch.torch_to_flax(torch_model.state_dict())
    logits = ra_nn.AttentionNet(10).apply(variables, images_nhwc)

`from_torchvision` converts torchvision's and timm's ResNets (a module, a `state_dict`
or a saved file) to the Flax `RegionAttentionClassifier` with a ResNet backbone.
"""

from regionatt_jax.pytorch.convert import flax_to_torch
from regionatt_jax.pytorch.convert import torch_to_flax
from regionatt_jax.pytorch.models import AttentionNet
from regionatt_jax.pytorch.models import FORMS
from regionatt_jax.pytorch.models import MLPScorer
from regionatt_jax.pytorch.models import partition
from regionatt_jax.pytorch.models import region_attention
from regionatt_jax.pytorch.models import RegionAttention
from regionatt_jax.pytorch.models import RegionAttentionClassifier
from regionatt_jax.pytorch.models import SmallCNN
from regionatt_jax.pytorch.pretrained import from_torchvision
from regionatt_jax.pytorch.pretrained import load_state_dict
from regionatt_jax.pytorch.pretrained import torchvision_key

__all__ = [
    "AttentionNet", "FORMS", "MLPScorer", "RegionAttention", "RegionAttentionClassifier",
    "SmallCNN", "flax_to_torch", "from_torchvision", "load_state_dict", "partition",
    "region_attention", "torch_to_flax", "torchvision_key",
]
