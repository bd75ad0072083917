"""NNX twins of the attention modules of `regionatt_jax.nn`: scorers, region attention,
attention pooling, channel/spatial attention, and `make_attention`.

Each is a plain `nnx.Module` built eagerly from its input width (`in_features`, the
channels `C` of its input), with the attributes of its Linen twin as keyword arguments,
the same parameter names, and the same equations (`regionatt_jax.nn.functional`). Maps
are sown as `nnx.Intermediate` under the Linen names (`attention_map`, `region_weights`,
`instance_weights`) while `nnx.capture` records; see `regionatt_jax.nnx.intermediates`.
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from regionatt_jax import _checks
from regionatt_jax.nn import channel as linen_channel
from regionatt_jax.nn import factory as linen_factory
from regionatt_jax.nn import functional
from regionatt_jax.nn import pooling as linen_pooling
from regionatt_jax.nn import region as linen_region
from regionatt_jax.nn import scorers as linen_scorers
from regionatt_jax.nn.maps import ATTENTION_MAP, INSTANCE_WEIGHTS, REGION_WEIGHTS
from regionatt_jax.nnx.layers import check_like, Conv, RecurrentCell, sow

Dtype = Any


def _pooled_width(in_features: int, pool: str) -> int:
  return 2 * in_features if pool == "meanmax" else in_features


class PooledScorer(nnx.Module):
  """A scorer that sees each region only through its pooled summary; see the Linen twin
  `regionatt_jax.nn.PooledScorer`. Subclasses set `pool` and `dtype` and implement
  `score_pooled`."""

  def __call__(self, regions):
    """Args: regions: `(..., N, h, w, C)`. Returns: `(..., N)` scores."""
    return self.score_pooled(linen_scorers.pool_regions(regions, self.pool))

  def _pooled(self, pooled):
    return functional.pooled_input(pooled, self.dtype, type(self).__name__)


def _batch_norm_mode(train: bool | None):
  """`use_running_average` for `nnx.BatchNorm`: None keeps the module's own mode."""
  return None if train is None else not train


class AttentionScore(nnx.Module):
  """Ilse et al. (2018) score on embeddings `(..., N, D) -> (..., N)`; see the Linen twin.

  Args:
    in_features: D.
    hidden: rows of V and U.
    gated: use the gated form.
    dtype, param_dtype, rngs: as for `nnx.Linear`.
  """

  def __init__(self, in_features: int, hidden: int = 64, gated: bool = False, *,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_scorers.AttentionScore, locals())
    linear = lambda i, o: nnx.Linear(i, o, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.V = linear(in_features, hidden)  # pylint: disable=invalid-name
    self.U = linear(in_features, hidden) if gated else None  # pylint: disable=invalid-name
    self.w = linear(hidden, 1)

  def __call__(self, h):
    """Args: h: `(..., N, D)`. Returns `(..., N)` scores."""
    h = _checks.float_array(h, "AttentionScore: h (`(..., N, D)`)", min_rank=2)
    return functional.attention_score(h, self.V, self.w, self.U)


class MLPScorer(PooledScorer):
  """`f(R_i) = MLP(pool(R_i))`; see `regionatt_jax.nn.MLPScorer`.

  Args:
    in_features: channels C of the regions.
    hidden: widths of the hidden layers.
    pool: `"mean"` or `"meanmax"`.
    dtype, param_dtype, rngs: as for `nnx.Linear`.
  """

  def __init__(self, in_features: int, hidden: Sequence[int] = (64,), pool: str = "mean", *,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_scorers.MLPScorer, locals())
    self.pool, self.dtype, self.num_hidden = pool, dtype, len(hidden)
    widths = (_pooled_width(in_features, pool), *hidden)
    for i, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
      setattr(self, f"hidden_{i}", nnx.Linear(width_in, width_out, dtype=dtype,
                                              param_dtype=param_dtype, rngs=rngs))
    self.out = nnx.Linear(widths[-1], 1, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def score_pooled(self, pooled):
    """Args: pooled: `(..., N, C')` pooled regions. Returns: `(..., N)` scores."""
    return functional.mlp_scores(
        self._pooled(pooled),
        [getattr(self, f"hidden_{i}") for i in range(self.num_hidden)], self.out)


class GatedScorer(PooledScorer):
  """Gated attention (Ilse et al., 2018) on pooled regions; see the Linen twin.

  Args:
    in_features: channels C of the regions.
    hidden: rows of V and U.
    pool: `"mean"` or `"meanmax"`.
    dtype, param_dtype, rngs: as for `nnx.Linear`.
  """

  def __init__(self, in_features: int, hidden: int = 64, pool: str = "mean", *,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_scorers.GatedScorer, locals())
    self.pool, self.dtype = pool, dtype
    self.attention = AttentionScore(_pooled_width(in_features, pool), hidden, gated=True,
                                    dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def score_pooled(self, pooled):
    """Args: pooled: `(..., N, C')` pooled regions. Returns: `(..., N)` scores."""
    return self.attention(self._pooled(pooled))


class ConvScorer(nnx.Module):
  """A small CNN on every region, mean pool, Linear 1; see the Linen twin.

  Args:
    in_features: channels C of the regions.
    features: widths of the ReLU conv layers.
    kernel_size: conv kernel size.
    conv: the conv class (`Conv` or `flax.nnx.Conv`).
    dtype, param_dtype, rngs: as for `nnx.Linear`.
  """

  def __init__(self, in_features: int, features: Sequence[int] = (16, 32),
               kernel_size: int = 3, conv: Callable[..., nnx.Module] = Conv, *,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_scorers.ConvScorer, locals())
    self.num_convs = len(features)
    widths = (in_features, *features)
    for i, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
      setattr(self, f"conv_{i}", conv(width_in, width_out, (kernel_size, kernel_size),
                                      padding="SAME", dtype=dtype, param_dtype=param_dtype,
                                      rngs=rngs))
    self.out = nnx.Linear(widths[-1], 1, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, regions):
    """Args: regions: `(..., N, h, w, C)`. Returns: `(..., N)` scores."""
    return functional.conv_scores(
        linen_scorers._regions(regions, "ConvScorer"),  # pylint: disable=protected-access
        [getattr(self, f"conv_{i}") for i in range(self.num_convs)], self.out)


class RecurrentScorer(PooledScorer):
  """A GRU/LSTM over the pooled regions in row-major order, then Linear 1; see the Linen twin.

  The cells are `RecurrentCell`s named as in the Linen parameter tree (`GRUCell_0`, and
  `GRUCell_1` for the backward direction).

  Args:
    in_features: channels C of the regions.
    hidden: hidden size.
    cell: `"gru"` or `"lstm"`.
    bidirectional: also run backwards and concatenate.
    pool: `"mean"` or `"meanmax"`.
    dtype, param_dtype, rngs: as for `nnx.Linear`.
  """

  def __init__(self, in_features: int, hidden: int = 64, cell: str = "gru",
               bidirectional: bool = False, pool: str = "mean", *, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_scorers.RecurrentScorer, locals())
    self.pool, self.dtype = pool, dtype
    prefix = linen_scorers.CELLS[cell].__name__
    self.cell_names = tuple(f"{prefix}_{i}" for i in range(2 if bidirectional else 1))
    for name in self.cell_names:
      setattr(self, name, RecurrentCell(cell, _pooled_width(in_features, pool), hidden,
                                        dtype=dtype, param_dtype=param_dtype, rngs=rngs))
    self.out = nnx.Linear(hidden * len(self.cell_names), 1, dtype=dtype,
                          param_dtype=param_dtype, rngs=rngs)

  def score_pooled(self, pooled):
    """Args: pooled: `(..., N, C')` pooled regions. Returns: `(..., N)` scores."""
    h = self._pooled(pooled)
    lead, (n, d) = h.shape[:-2], h.shape[-2:]
    sequence = h.reshape((-1, n, d))
    states = jnp.concatenate(
        [getattr(self, name).scan(sequence, reverse=direction == 1)
         for direction, name in enumerate(self.cell_names)], axis=-1)
    return self.out(states).reshape(lead + (n,))


class SelfAttentionScorer(PooledScorer):
  """Regions attend to each other (a pre-LayerNorm Transformer block), then Linear 1.

  Args:
    in_features: channels C of the regions.
    num_regions: N, needed for `position_embeddings` (one learned embedding per region).
    embed_dim: width of the region embeddings.
    num_heads: attention heads; must divide `embed_dim`.
    position_embeddings: add learned `(N, embed_dim)` position embeddings.
    mlp_ratio: width of the block's MLP relative to `embed_dim`.
    pool: `"mean"` or `"meanmax"`.
    dtype, param_dtype, rngs: as for `nnx.Linear`.
  """

  def __init__(self, in_features: int, num_regions: int | None = None, embed_dim: int = 64,
               num_heads: int = 4, position_embeddings: bool = True, mlp_ratio: int = 2,
               pool: str = "mean", *, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_scorers.SelfAttentionScorer, locals())
    if embed_dim % num_heads:
      raise ValueError(
          f"SelfAttentionScorer: num_heads must divide embed_dim, got num_heads="
          f"{num_heads}, embed_dim={embed_dim}")
    if position_embeddings and num_regions is None:
      raise ValueError("SelfAttentionScorer: position_embeddings=True needs num_regions "
                       "(the number of regions N), got None")
    self.pool, self.dtype = pool, dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.embed = nnx.Linear(_pooled_width(in_features, pool), embed_dim, **kw)
    self.positions = (nnx.Param(jax.nn.initializers.normal(0.02)(
        rngs.params(), (num_regions, embed_dim), param_dtype)) if position_embeddings else None)
    self.norm_attention = nnx.LayerNorm(embed_dim, **kw)
    self.attention = nnx.MultiHeadAttention(num_heads, embed_dim, decode=False, **kw)
    self.norm_mlp = nnx.LayerNorm(embed_dim, **kw)
    self.mlp_in = nnx.Linear(embed_dim, embed_dim * mlp_ratio, **kw)
    self.mlp_out = nnx.Linear(embed_dim * mlp_ratio, embed_dim, **kw)
    self.norm_out = nnx.LayerNorm(embed_dim, **kw)
    self.out = nnx.Linear(embed_dim, 1, **kw)

  def score_pooled(self, pooled):
    """Args: pooled: `(..., N, C')` pooled regions. Returns: `(..., N)` scores."""
    return functional.self_attention_scores(
        self._pooled(pooled),
        None if self.positions is None else self.positions[...], self.embed,
        self.norm_attention, self.attention, self.norm_mlp, self.mlp_in, self.mlp_out,
        self.norm_out, self.out)


#: Scorers by name: the twins of `regionatt_jax.nn.SCORERS`.
SCORERS: Mapping[str, type[nnx.Module]] = {
    name: globals()[cls.__name__] for name, cls in linen_factory.SCORERS.items()}


class RegionAttention(nnx.Module):
  """`y, a = region_attention(x, scorer, ...)`; see `regionatt_jax.nn.RegionAttention`.

  Sows `region_weights` `(..., N)` and `attention_map` `(..., H, W)` (inside
  `nnx.capture`).

  Args:
    in_features: channels C of the feature map.
    grid, size, stride, pad: the regions, as in `regionatt_jax.region_layout`.
    scorer: an NNX scorer for `(..., N, h, w, C)` (default `MLPScorer(in_features)`).
    normalize: `"softmax"`, `"sigmoid"`, `"sparsemax"` or `"none"`.
    aggregate: `"sum"`, `"mean"` or `"reassemble"`.
    temperature: scores are divided by it before normalizing.
    dtype, param_dtype: of the default scorer.
    rngs: `nnx.Rngs` for the default scorer.
  """

  def __init__(self, in_features: int, grid: Sequence[int] | None = None, *,
               size: Sequence[int] | None = None, stride: Sequence[int] | None = None,
               pad: bool = False, scorer: nnx.Module | None = None,
               normalize: str = "softmax", aggregate: str = "sum", temperature: float = 1.0,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_region.RegionAttention, locals())
    as_tuple = lambda v: tuple(v) if isinstance(v, Sequence) else v  # an int is (v, v)
    self.grid, self.size, self.stride = as_tuple(grid), as_tuple(size), as_tuple(stride)
    self.pad, self.normalize, self.aggregate = pad, normalize, aggregate
    self.temperature = temperature
    self.scorer = scorer if scorer is not None else MLPScorer(
        in_features, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, train: bool | None = None, mask=None):
    """Args: x: `(..., H, W, C)`; train: unused; mask: optional `(..., N)` bool.

    Returns `(..., h, w, C)` for sum/mean, `(..., H, W, C)` for reassemble.
    """
    del train
    x = _checks.float_array(x, "RegionAttention: x (feature map `(..., H, W, C)`)", min_rank=3)
    region_args = dict(size=self.size, stride=self.stride, pad=self.pad)
    linen_region._layout(x, "RegionAttention", self.grid, **region_args)  # pylint: disable=protected-access
    y, weights, attention_map = functional.region_attention(
        x, self.scorer, self.grid, **region_args, normalize=self.normalize,
        aggregate=self.aggregate, mask=mask, temperature=self.temperature)
    sow(self, REGION_WEIGHTS, weights)
    sow(self, ATTENTION_MAP, attention_map)
    return y


class MultiScaleRegionAttention(nnx.Module):
  """Region attention over several grids; see `regionatt_jax.nn.MultiScaleRegionAttention`.

  Args:
    in_features: channels C of the feature map.
    grids: the grids, coarse to fine.
    mode: `"parallel"` or `"coarse_to_fine"`.
    scorer: an NNX scorer class or factory, called once per grid as
      `scorer(in_features, dtype=..., param_dtype=..., rngs=...)`.
    normalize: a kind of `regionatt_jax.normalize`.
    aggregate: coarse_to_fine only: `"sum"`, `"mean"` or `"reassemble"`.
    dtype, param_dtype: of the scorers (and the fusion logits' parameter dtype).
    rngs: `nnx.Rngs`.
  """

  def __init__(self, in_features: int,
               grids: Sequence[Sequence[int]] = ((1, 1), (2, 2), (4, 4)), *,
               mode: str = "parallel", scorer: Callable[..., nnx.Module] = MLPScorer,
               normalize: str = "softmax", aggregate: str = "sum",
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_region.MultiScaleRegionAttention, locals())
    self.grids = tuple(tuple(grid) for grid in grids)
    self.mode, self.normalize, self.aggregate = mode, normalize, aggregate
    for s in range(len(self.grids)):
      setattr(self, f"scorer_{s}", scorer(in_features, dtype=dtype, param_dtype=param_dtype,
                                          rngs=rngs))
    self.fusion_logits = (nnx.Param(jnp.zeros((len(self.grids),), param_dtype))
                          if mode == "parallel" else None)

  def __call__(self, x, train: bool | None = None):
    """Args: x: `(..., H, W, C)`; train: unused. Returns as the Linen twin."""
    del train
    x = _checks.float_array(
        x, "MultiScaleRegionAttention: x (feature map `(..., H, W, C)`)", min_rank=3)
    layouts = [linen_region._layout(x, "MultiScaleRegionAttention", grid)  # pylint: disable=protected-access
               for grid in self.grids]
    scorers = [getattr(self, f"scorer_{s}") for s in range(len(self.grids))]
    if self.mode == "parallel":
      y, gain = functional.multiscale_parallel(x, layouts, scorers, self.fusion_logits[...],
                                               self.normalize)
      sow(self, ATTENTION_MAP, gain)
      return y
    functional.check_refinement(layouts, "MultiScaleRegionAttention")
    y, weights, attention_map = functional.multiscale_coarse_to_fine(
        x, layouts, scorers, self.normalize, self.aggregate)
    sow(self, REGION_WEIGHTS, weights)
    sow(self, ATTENTION_MAP, attention_map)
    return y


class AttentionPooling(nnx.Module):
  """Pools a bag `(..., N, D)` to `(..., D)`; see `regionatt_jax.nn.AttentionPooling`.

  Sows `instance_weights` `(..., N)` (inside `nnx.capture`).

  Args:
    in_features: D (only used by "attention" and "gated"; may be None for the others).
    kind: `"attention"`, `"gated"`, `"mean"` or `"max"`.
    hidden: rows of V and U of the attention score.
    dtype, param_dtype, rngs: as for `nnx.Linear`.
  """

  def __init__(self, in_features: int | None, kind: str = "attention", hidden: int = 64, *,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_pooling.AttentionPooling, locals(), optional_width=True)
    self.kind, self.dtype = kind, dtype
    scored = kind in ("attention", "gated")
    if scored and in_features is None:
      raise ValueError(f"AttentionPooling: kind={kind!r} needs in_features (D), got None")
    self.score = (AttentionScore(in_features, hidden, gated=kind == "gated", dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs) if scored else None)

  def __call__(self, h, mask=None):
    """Args: h: `(..., N, D)`; mask: optional boolean `(..., N)`. Returns `(..., D)`."""
    h = _checks.float_array(h, "AttentionPooling: h (`(..., N, D)`)", min_rank=2)
    valid = jnp.ones(h.shape[:-1], bool) if mask is None else jnp.broadcast_to(
        _checks.bool_array(mask, "AttentionPooling: mask", h.shape[:-1]), h.shape[:-1])
    pooled, weights = functional.attention_pooling(
        h, valid, self.kind, self.score, self.dtype if self.dtype is not None else h.dtype)
    sow(self, INSTANCE_WEIGHTS, weights)
    return pooled


def _feature_map(x, module: str):
  return linen_channel._feature_map(x, module)  # pylint: disable=protected-access


def _compute_dtype(x, dtype):
  return linen_channel._compute_dtype(x, dtype)  # pylint: disable=protected-access


class _Bottleneck(nnx.Module):
  """Linear C -> C/r -> ReLU -> Linear C/r -> C, the excitation MLP of SE and CBAM."""

  def __init__(self, channels: int, hidden: int, *, dtype, param_dtype, rngs):
    self.reduce = nnx.Linear(channels, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.expand = nnx.Linear(hidden, channels, dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def __call__(self, s):
    return functional.bottleneck(s, self.reduce, self.expand)


class _Gate(nnx.Module):
  """A channel or spatial attention module: checks `x`, then applies `self.gate`."""

  def __call__(self, x, train: bool | None = None):
    """Args: x: `(..., H, W, C)`; train: unused. Returns `(..., H, W, C)`."""
    del train
    x = _feature_map(x, type(self).__name__)
    return self.gate(x, _compute_dtype(x, self.dtype))


def _bottleneck(in_features, reduction, module, dtype, param_dtype, rngs):
  hidden = linen_channel._divisible_hidden(in_features, reduction, module)  # pylint: disable=protected-access
  return _Bottleneck(in_features, hidden, dtype=dtype, param_dtype=param_dtype, rngs=rngs)


class SqueezeExcite(_Gate):
  """Squeeze-and-excitation; see `regionatt_jax.nn.SqueezeExcite`.

  Args:
    in_features: channels C (divisible by `reduction`).
    reduction: r.
    dtype, param_dtype, rngs: as for `nnx.Linear`.
  """

  def __init__(self, in_features: int, reduction: int = 16, *, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_channel.SqueezeExcite, locals())
    self.dtype = dtype
    self.mlp = _bottleneck(in_features, reduction, "SqueezeExcite", dtype, param_dtype, rngs)

  def gate(self, x, dtype):
    return functional.squeeze_excite(x, self.mlp, dtype)


class EfficientChannelAttention(_Gate):
  """ECA; see `regionatt_jax.nn.EfficientChannelAttention`.

  Args:
    in_features: channels C (picks the kernel size when `kernel_size` is None; may be
      None when `kernel_size` is given).
    kernel_size: odd k, or None for `eca_kernel_size(C, gamma, b)`.
    gamma, b: of the adaptive kernel size.
    dtype, param_dtype, rngs: as for `nnx.Conv`.
  """

  def __init__(self, in_features: int | None, kernel_size: int | None = None,
               gamma: float = 2.0, b: float = 1.0, *, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_channel.EfficientChannelAttention, locals(),
               optional_width=kernel_size is not None)
    k = kernel_size or linen_channel.eca_kernel_size(in_features, gamma, b)
    self.dtype = dtype
    self.conv = nnx.Conv(1, 1, (k,), padding="SAME", use_bias=False, dtype=dtype,
                         param_dtype=param_dtype, rngs=rngs)

  def gate(self, x, dtype):
    return functional.efficient_channel_attention(x, self.conv, dtype)


class SpatialAttention(_Gate):
  """CBAM's spatial attention; sows `attention_map` `(..., H, W)`.

  Args:
    in_features: unused (the conv reads the 2 pooled channels); part of the shared
      signature of the attention modules.
    kernel_size: k of the k×k conv.
    dtype, param_dtype, rngs: as for `nnx.Conv`.
  """

  def __init__(self, in_features: int | None = None, kernel_size: int = 7, *,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_channel.SpatialAttention, locals(), optional_width=True)
    del in_features
    self.dtype = dtype
    self.conv = nnx.Conv(2, 1, (kernel_size, kernel_size), padding="SAME", use_bias=False,
                         dtype=dtype, param_dtype=param_dtype, rngs=rngs)

  def gate(self, x, dtype):
    y, attention = functional.spatial_attention(x, self.conv, dtype)
    sow(self, ATTENTION_MAP, attention)
    return y


class CBAM(_Gate):
  """Channel then spatial attention; see `regionatt_jax.nn.CBAM`.

  Args:
    in_features: channels C (divisible by `reduction`).
    reduction: r.
    kernel_size: k of the spatial attention conv.
    dtype, param_dtype, rngs: as for `nnx.Linear`.
  """

  def __init__(self, in_features: int, reduction: int = 16, kernel_size: int = 7, *,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_channel.CBAM, locals())
    self.dtype = dtype
    self.mlp = _bottleneck(in_features, reduction, "CBAM", dtype, param_dtype, rngs)
    self.spatial = SpatialAttention(kernel_size=kernel_size, dtype=dtype,
                                    param_dtype=param_dtype, rngs=rngs)

  def gate(self, x, dtype):
    return self.spatial(functional.cbam_channel_gate(x, self.mlp, dtype))


class CoordinateAttention(nnx.Module):
  """Coordinate attention; see `regionatt_jax.nn.CoordinateAttention`.

  Args:
    in_features: channels C.
    reduction: r.
    min_hidden: lower bound on the hidden width `m = max(min_hidden, C // r)`.
    momentum: BatchNorm momentum.
    dtype, param_dtype, rngs: as for `nnx.Linear`.
  """

  def __init__(self, in_features: int, reduction: int = 32, min_hidden: int = 8,
               momentum: float = 0.9, *, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_channel.CoordinateAttention, locals())
    if reduction < 1:
      raise ValueError(f"CoordinateAttention: reduction must be >= 1, got {reduction}")
    hidden = max(min_hidden, in_features // reduction)
    self.dtype = dtype
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.conv_shared = nnx.Linear(in_features, hidden, **kw)
    self.bn = nnx.BatchNorm(hidden, momentum=momentum, **kw)
    self.conv_h = nnx.Linear(hidden, in_features, **kw)
    self.conv_w = nnx.Linear(hidden, in_features, **kw)

  def __call__(self, x, train: bool | None = None):
    """Args: x: `(..., H, W, C)`; train: BatchNorm mode (None: the module's own, see
    `nnx.Module.train`/`eval`). Returns `(..., H, W, C)`."""
    x = _feature_map(x, "CoordinateAttention")
    norm = lambda y: self.bn(y, use_running_average=_batch_norm_mode(train))
    return functional.coordinate_attention(x, self.conv_shared, norm, self.conv_h,
                                           self.conv_w, _compute_dtype(x, self.dtype))


#: Attention modules by name: the twins of `regionatt_jax.nn.ATTENTIONS`.
ATTENTIONS: Mapping[str, type[nnx.Module]] = {
    name: globals()[cls.__name__] for name, cls in linen_factory.ATTENTIONS.items()}


def _scorer_by_name(kind: str, in_features: int, kwargs: dict, rngs: nnx.Rngs) -> dict:
  """Replaces a scorer name in `kwargs` by what `kind` takes: `RegionAttention` an
  instance (built with `scorer_kwargs` and the module's dtypes), `MultiScaleRegionAttention`
  a class."""
  scorer_kwargs = kwargs.pop("scorer_kwargs", None) or {}
  name = linen_factory.scorer_name(kind, kwargs, scorer_kwargs)
  if name is None:
    return kwargs
  dtypes = {k: kwargs[k] for k in ("dtype", "param_dtype") if k in kwargs}
  if kind == "region":
    return {**kwargs, "scorer": SCORERS[name](in_features, **scorer_kwargs, **dtypes,
                                              rngs=rngs)}
  return {**kwargs, "scorer": functools.partial(SCORERS[name], **scorer_kwargs)}


def make_attention(kind: str | None, in_features: int, /, *, rngs: nnx.Rngs,
                   **kwargs) -> nnx.Module | None:
  """Builds the NNX attention module called `kind` for `in_features` channels.

  As `regionatt_jax.nn.make_attention`; a scorer may be named (`scorer="gated"`, with
  optional `scorer_kwargs`).

  Args:
    kind: a key of `ATTENTIONS`, or None / "none".
    in_features: channels C of the feature map it will attend over.
    rngs: `nnx.Rngs`.
    **kwargs: arguments of that module.

  Returns:
    The module, or None.
  """
  if kind is None:
    return None
  linen_factory.check_kind(kind, "make_attention: kind")
  if kind == "none":
    return None
  module = ATTENTIONS[kind]
  kwargs = _scorer_by_name(kind, in_features, dict(kwargs), rngs)
  try:
    return module(in_features, **kwargs, rngs=rngs)
  except TypeError as error:
    raise TypeError(f"make_attention: bad options {sorted(kwargs)} for {kind!r} "
                    f"({module.__name__}): {error}") from None
