"""Attention pooling of a bag (set) of embeddings, for multiple-instance learning.

`AttentionPooling(kind)` maps embeddings `h` `(..., N, D)` with an optional boolean
mask `(..., N)` to one bag embedding `z` `(..., D)`:

- `"attention"`: `a = softmax_k(w^T tanh(V h_k))`, `z = Σ_k a_k h_k` (Ilse et al., 2018, eq. 9).
- `"gated"`: `a = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))` (eq. 10).
- `"mean"`: the mean of the valid instances (uniform weights).
- `"max"`: the per-feature max over valid instances.

Masked instances get weight exactly 0 (the mask goes to `regionatt_jax.normalize`). The
instance weights `(..., N)` are sown as `instance_weights`; for `"max"` they are the
fraction of features each instance supplies (they also sum to 1).
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

import regionatt_jax as ra
from regionatt_jax import _checks
from regionatt_jax.nn.maps import INSTANCE_WEIGHTS
from regionatt_jax.nn.scorers import AttentionScore

Dtype = Any

KINDS = ("attention", "gated", "mean", "max")


class AttentionPooling(nn.Module):
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

  def __post_init__(self):
    _checks.choice(self.kind, "AttentionPooling: kind", KINDS)
    _checks.integer(self.hidden, "AttentionPooling: hidden")
    _checks.dtypes("AttentionPooling", self.dtype, self.param_dtype)
    super().__post_init__()

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
    if self.kind == "max":
      pooled, weights = _masked_max(h, valid)
    else:
      if self.kind == "mean":
        scores = jnp.zeros(h.shape[:-1], jnp.float32)  # softmax of equal scores is uniform
      else:
        scores = AttentionScore(self.hidden, gated=self.kind == "gated", dtype=self.dtype,
                                param_dtype=self.param_dtype, name="score")(h)
      weights = ra.normalize(scores, "softmax", mask=valid)
      pooled = jnp.einsum("...n,...nd->...d", weights.astype(jnp.float32),
                          h.astype(jnp.float32))
    self.sow("intermediates", INSTANCE_WEIGHTS, weights)
    return pooled.astype(self.dtype if self.dtype is not None else h.dtype)


def _masked_max(h, valid):
  """Per-feature max over valid instances, and the fraction of features each one wins."""
  filled = jnp.where(valid[..., None], h.astype(jnp.float32), -jnp.inf)
  winners = jnp.argmax(filled, axis=-2)  # (..., D)
  share = jnp.mean(jax.nn.one_hot(winners, h.shape[-2], axis=-1), axis=-2)
  any_valid = jnp.any(valid, axis=-1, keepdims=True)
  return (jnp.where(any_valid, jnp.max(filled, axis=-2), 0.0),
          jnp.where(any_valid, share, 0.0))
