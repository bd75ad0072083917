"""Region attention as Flax modules: one grid (`RegionAttention`) or several
(`MultiScaleRegionAttention`). Both call `regionatt_jax.region_attention`.

Both sow into 'intermediates' (read them with `apply(..., mutable=["intermediates"])`
and `regionatt_jax.nn.attention_maps`):
`region_weights` `(..., N)` (RegionAttention) and `attention_map` `(..., H, W)` at the
resolution of the module's input.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

import regionatt_jax as ra
from regionatt_jax import _checks
from regionatt_jax.nn import functional
from regionatt_jax.nn.checked import CheckedModule
from regionatt_jax.nn.maps import ATTENTION_MAP, REGION_WEIGHTS
from regionatt_jax.nn.scorers import MLPScorer

Dtype = Any
ModuleDef = Any

def _layout(x, module: str, grid, size=None, stride=None, pad=False):
  """`ra.region_layout` of the feature map `x`, with errors that name the module."""
  try:
    return ra.region_layout(x.shape[-3:-1], grid, size=size, stride=stride, pad=pad)
  except (ValueError, TypeError) as error:
    raise type(error)(
        f"{module}: cannot cut its input feature map of spatial shape "
        f"{tuple(x.shape[-3:-1])} into regions: {error}") from None


class RegionAttention(CheckedModule):
  """`y, a = region_attention(x, scorer, ...)`: score, normalize, weight and aggregate regions.

  Exactly one of `grid` and `size` (with optional `stride`) gives the regions, as in
  `regionatt_jax.region_layout`.

  Attributes:
    grid: `(gh, gw)` non-overlapping regions.
    size: `(h, w)` sliding windows.
    stride: `(sh, sw)` window step (default: `size`).
    pad: zero-pad the input so the regions cover it; all-padding regions are masked.
    scorer: a module mapping `(..., N, h, w, C)` to `(..., N)` (default `MLPScorer()`);
      a `PooledScorer` gets the pooled regions, read in place from `x`.
    normalize: `"softmax"`, `"sigmoid"`, `"sparsemax"` or `"none"`.
    aggregate: `"sum"` / `"mean"` (output `(..., h, w, C)`) or `"reassemble"` (`(..., H, W, C)`).
    temperature: scores are divided by it before normalizing.
    dtype: compute dtype of the default scorer.
    param_dtype: parameter dtype of the default scorer.
  """
  grid: Sequence[int] | None = None
  size: Sequence[int] | None = None
  stride: Sequence[int] | None = None
  pad: bool = False
  scorer: nn.Module | None = None
  normalize: str = "softmax"
  aggregate: str = "sum"
  temperature: float = 1.0
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    # Without grid or size the module is incomplete (make_attention("region") builds
    # it); calling it says to give one.
    if a.grid is not None or a.size is not None:
      try:
        ra.regions.layout_arguments(a.grid, size=a.size, stride=a.stride,
                                    pad=a.pad)
      except (ValueError, TypeError) as error:
        raise type(error)(f"RegionAttention: {error}") from None
    _checks.boolean(a.pad, "RegionAttention: pad")
    if a.scorer is not None:
      _checks.function(a.scorer, "RegionAttention: scorer",
                       "a scorer module `(..., N, h, w, C) -> (..., N)` or None")
    _checks.choice(a.normalize, "RegionAttention: normalize", ra.weighting.NORMALIZERS)
    _checks.choice(a.aggregate, "RegionAttention: aggregate", ra.weighting.AGGREGATIONS)
    _checks.real_scalar(a.temperature, "RegionAttention: temperature", positive=True)
    _checks.dtypes("RegionAttention", a.dtype, a.param_dtype)

  def _region_args(self):
    return dict(size=self.size, stride=self.stride, pad=self.pad)

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    """Attends over the regions of `x`.

    Args:
      x: `(..., H, W, C)` feature map.
      train: unused; part of the shared attention-module signature.
      mask: optional boolean `(..., N)` mask of valid regions.

    Returns:
      `(..., h, w, C)` for sum/mean, `(..., H, W, C)` for reassemble.
    """
    del train
    x = _checks.float_array(x, "RegionAttention: x (feature map `(..., H, W, C)`)", min_rank=3)
    _layout(x, "RegionAttention", self.grid, **self._region_args())
    scorer = self.scorer if self.scorer is not None else MLPScorer(
        dtype=self.dtype, param_dtype=self.param_dtype, name="scorer")
    y, weights, attention_map = functional.region_attention(
        x, scorer, self.grid, **self._region_args(), normalize=self.normalize,
        aggregate=self.aggregate, mask=mask, temperature=self.temperature)
    self.sow("intermediates", REGION_WEIGHTS, weights)
    self.sow("intermediates", ATTENTION_MAP, attention_map)
    return y


MODES = ("parallel", "coarse_to_fine")


class MultiScaleRegionAttention(CheckedModule):
  """Region attention over several grids, coarse to fine (e.g. 1x1, 2x2, 4x4, 8x8).

  `mode="parallel"`: region attention per grid (own scorer, aggregate "reassemble"), fused by learned softmax weights β over the scales:
  `y = Σ_s β_s g_s y_s`, where `g_s = N_s` for sum-to-one normalizers (softmax,
  sparsemax) so that uniform weights return `x` at every scale, else 1. Output
  `(..., H, W, C)`; the sown map is the per-pixel gain, `y = map[..., None] * x`.

  `mode="coarse_to_fine"`: hierarchical weights. Each grid must refine the previous one
  (its counts are multiples). Level 0 weights are `normalize(s_0)`; a region at level
  l gets its parent's weight times `normalize` of its score among its siblings, so with
  softmax the finest weights sum to 1. The finest regions are then aggregated with
  `aggregate` (`"sum"` -> `(..., h, w, C)` of the finest region size).

  Attributes:
    grids: the grids, coarse to fine.
    mode: `"parallel"` or `"coarse_to_fine"`.
    scorer: a scorer class or factory, called once per grid as
      `scorer(dtype=dtype, param_dtype=param_dtype, name=...)` (e.g.
      `functools.partial(ConvScorer, features=(16,))`).
    normalize: a kind of `regionatt_jax.normalize`.
    aggregate: coarse_to_fine only: `"sum"`, `"mean"` or `"reassemble"`.
    dtype: compute dtype of the scorers.
    param_dtype: dtype of the scorers' parameters and the fusion logits.
  """
  grids: Sequence[Sequence[int]] = ((1, 1), (2, 2), (4, 4))
  mode: str = "parallel"
  scorer: ModuleDef = MLPScorer
  normalize: str = "softmax"
  aggregate: str = "sum"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    if (not isinstance(a.grids, Sequence) or isinstance(a.grids, (str, bytes))
        or not a.grids):
      raise TypeError(f"MultiScaleRegionAttention: grids must be a non-empty sequence of "
                      f"grids (gh, gw), got {a.grids!r}")
    for grid in a.grids:
      _checks.int_pair(grid, "MultiScaleRegionAttention: grids (each grid)")
    _checks.choice(a.mode, "MultiScaleRegionAttention: mode", MODES)
    _checks.function(a.scorer, "MultiScaleRegionAttention: scorer",
                     "a scorer class or factory")
    _checks.choice(a.normalize, "MultiScaleRegionAttention: normalize",
                   ra.weighting.NORMALIZERS)
    _checks.choice(a.aggregate, "MultiScaleRegionAttention: aggregate",
                   ra.weighting.AGGREGATIONS)
    _checks.dtypes("MultiScaleRegionAttention", a.dtype, a.param_dtype)

  def _scorer(self, index: int):
    return self.scorer(dtype=self.dtype, param_dtype=self.param_dtype, name=f"scorer_{index}")

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Attends over the regions of `x` at every scale.

    Args:
      x: `(..., H, W, C)` feature map.
      train: unused; part of the shared attention-module signature.

    Returns:
      `(..., H, W, C)` (parallel) or as `aggregate` says over the finest grid.
    """
    del train
    x = _checks.float_array(
        x, "MultiScaleRegionAttention: x (feature map `(..., H, W, C)`)", min_rank=3)
    layouts = [_layout(x, "MultiScaleRegionAttention", grid) for grid in self.grids]
    if self.mode == "parallel":
      return self._parallel(x, layouts)
    return self._coarse_to_fine(x, layouts)

  def _parallel(self, x, layouts):
    fusion_logits = self.param("fusion_logits", nn.initializers.zeros, (len(layouts),),
                               self.param_dtype)
    y, gain = functional.multiscale_parallel(
        x, layouts, [self._scorer(s) for s in range(len(layouts))], fusion_logits,
        self.normalize)
    self.sow("intermediates", ATTENTION_MAP, gain)
    return y

  def _coarse_to_fine(self, x, layouts):
    functional.check_refinement(layouts, "MultiScaleRegionAttention")
    y, weights, attention_map = functional.multiscale_coarse_to_fine(
        x, layouts, [self._scorer(s) for s in range(len(layouts))], self.normalize,
        self.aggregate)
    self.sow("intermediates", REGION_WEIGHTS, weights)
    self.sow("intermediates", ATTENTION_MAP, attention_map)
    return y
