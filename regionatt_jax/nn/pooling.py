"""Attention pooling of a bag (set) of embeddings, for multiple-instance learning.

`AttentionPooling(kind)` maps embeddings `h` `(..., N, D)` with an optional boolean
mask `(..., N)` to one bag embedding `z` `(..., D)`:

- `"attention"`: `a = softmax_k(w^T tanh(V h_k))`, `z = Σ_k a_k h_k` (Ilse et al., 2018, eq. 9).
- `"gated"`: `a = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))` (eq. 10).
- `"mean"`: the mean of the valid instances (uniform weights).
- `"max"`: the per-feature max over valid instances.

Masked instances get weight exactly 0 (the mask goes to `regionatt_jax.normalize`). The
instance weights `(..., N)` are sown as `instance_weights`; for `"max"` they are the
share of the features each instance supplies, a feature that several instances reach
split evenly among them (they also sum to 1).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from regionatt_jax import _checks
from regionatt_jax.nn import functional
from regionatt_jax.nn.checked import CheckedModule
from regionatt_jax.nn.maps import INSTANCE_WEIGHTS
from regionatt_jax.nn.scorers import AttentionScore

Dtype = Any

KINDS = ("attention", "gated", "mean", "max")


class AttentionPooling(CheckedModule):
  """Pools a bag of instance embeddings with (gated) attention, mean or max.

  Attributes:
    kind: `"attention"`, `"gated"`, `"mean"` or `"max"`.
    hidden: rows of V and U of the attention score.
    dtype: compute dtype (None: inferred).
    param_dtype: parameter dtype.
  """
  kind: str = "attention"
  hidden: int = 64
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.choice(a.kind, "AttentionPooling: kind", KINDS)
    _checks.integer(a.hidden, "AttentionPooling: hidden")
    _checks.dtypes("AttentionPooling", a.dtype, a.param_dtype)

  @nn.compact
  def __call__(self, h, mask=None):
    """Pools instances.

    Args:
      h: `(..., N, D)` instance embeddings.
      mask: optional boolean `(..., N)` (or broadcastable) mask of valid instances.

    Returns:
      `(..., D)` bag embedding. A bag with no valid instance pools to zeros.
    """
    h = _checks.float_array(h, "AttentionPooling: h (`(..., N, D)`)", min_rank=2)
    _checks.nonempty_axis(h, "AttentionPooling: h", -2, "instance (N)")
    valid = jnp.ones(h.shape[:-1], bool) if mask is None else jnp.broadcast_to(
        _checks.bool_array(mask, "AttentionPooling: mask", h.shape[:-1]), h.shape[:-1])
    score = (AttentionScore(self.hidden, gated=self.kind == "gated", dtype=self.dtype,
                            param_dtype=self.param_dtype, name="score")
             if self.kind in ("attention", "gated") else None)
    pooled, weights = functional.attention_pooling(
        h, valid, self.kind, score, self.dtype if self.dtype is not None else h.dtype)
    self.sow("intermediates", INSTANCE_WEIGHTS, weights)
    return pooled
