"""regionatt_jax: attention over image regions, in JAX.

    a_i   = f(R_i)      score of region i
    w_i   = a_i * R_i   weighted region
    I_att = sum_i w_i   attended output

The top level holds the pure functions (no Flax, no state); `regionatt_jax.nn` holds the
Flax modules, `regionatt_jax.data` the datasets and input pipelines, `regionatt_jax.train`
the training loop. Those subpackages are imported on demand.
"""

from regionatt_jax.regions import attention_map
from regionatt_jax.regions import pad_image
from regionatt_jax.regions import partition
from regionatt_jax.regions import region_boxes
from regionatt_jax.regions import region_layout
from regionatt_jax.regions import region_mask
from regionatt_jax.regions import RegionLayout
from regionatt_jax.regions import unpartition
from regionatt_jax.weighting import aggregate
from regionatt_jax.weighting import normalize
from regionatt_jax.weighting import per_region
from regionatt_jax.weighting import region_attention
from regionatt_jax.weighting import weight

__version__ = "0.1.0"

__all__ = [
    "RegionLayout", "aggregate", "attention_map", "normalize", "pad_image", "partition",
    "per_region", "region_attention", "region_boxes", "region_layout", "region_mask",
    "unpartition", "weight",
]
