"""The three equations of region attention, as pure functions.

    a_i   = f(R_i)      `normalize(score_fn(R))`: region scores become weights
    w_i   = a_i * R_i   `weight(R, a)`
    I_att = sum_i w_i   `aggregate(w)`

`region_attention` composes them without materializing `w` or a transposed copy of the
image for the weighted sum: see its docstring. With `pool=`, the scorer sees each region
only through a pooled summary (mean, max or both), taken straight from the free reshape
of a grid (or of the blocks that overlapping windows are made of).
"""

from collections.abc import Callable

import einops
import jax
import jax.numpy as jnp

from regionatt_jax import _checks
from regionatt_jax import regions as regions_lib

ScoreFn = Callable[[jax.Array], jax.Array]


def _accumulation_dtype(dtype):
  """float32 for half-precision inputs, the input dtype otherwise (float64 stays)."""
  return jnp.promote_types(dtype, jnp.float32)


def _softmax(scores, mask):
  top = jnp.max(jnp.where(mask, scores, -jnp.inf), axis=-1, keepdims=True)
  top = jnp.where(jnp.isfinite(top), top, 0.0)  # all-masked rows
  # The inner `where` keeps exp() of masked entries finite, so their gradient is 0, not NaN.
  exp = jnp.where(mask, jnp.exp(jnp.where(mask, scores - top, 0.0)), 0.0)
  total = jnp.sum(exp, axis=-1, keepdims=True)
  return exp / jnp.where(total > 0, total, 1.0)


def _sigmoid(scores, mask):
  return jnp.where(mask, jax.nn.sigmoid(scores), 0.0)


def _sparsemax(scores, mask):
  """Euclidean projection onto the simplex (Martins & Astudillo, 2016), over valid entries."""
  # Masked entries sort last and never enter the support.
  lowest = jnp.finfo(scores.dtype).min / (2 * scores.shape[-1] + 2)
  z = jnp.where(mask, scores, lowest)
  z_sorted = -jnp.sort(-z, axis=-1)
  rank = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
  cumulative = jnp.cumsum(z_sorted, axis=-1)
  in_support = (1 + rank * z_sorted > cumulative) & (z_sorted > lowest)
  support_size = jnp.maximum(jnp.sum(in_support, axis=-1, keepdims=True), 1)
  tau = (jnp.take_along_axis(cumulative, support_size - 1, axis=-1) - 1) / support_size
  return jnp.where(mask, jnp.maximum(z - tau, 0.0), 0.0)


def _identity(scores, mask):
  return jnp.where(mask, scores, 0.0)


NORMALIZERS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "softmax": _softmax,
    "sigmoid": _sigmoid,
    "sparsemax": _sparsemax,
    "none": _identity,
}


def normalize(scores, kind: str = "softmax", mask=None, temperature=1.0):
  """Turns region scores into region weights.

  Args:
    scores: `(..., N)` scores, floating point.
    kind: `"softmax"` (weights sum to 1), `"sigmoid"` (each weight in (0, 1)),
      `"sparsemax"` (sums to 1, exact zeros), or `"none"` (the scores as they are).
    mask: optional boolean `(..., N)` (or broadcastable) mask of valid regions. Masked
      regions get weight exactly 0; a row with no valid region gets all zeros.
    temperature: scores are divided by it first; a finite number > 0 (Python, NumPy or
      a 0-d array). Its value is checked unless it is traced under `jit`.

  Returns:
    `(..., N)` weights, in the dtype of `scores`. The arithmetic runs in float32 for
    float16/bfloat16 scores.
  """
  scores = _checks.float_array(scores, "scores", min_rank=1)
  _checks.nonempty_axis(scores, "scores", -1, "region (N)")
  _checks.choice(kind, "kind", NORMALIZERS)
  _checks.real_scalar(temperature, "temperature", positive=True)
  if mask is None:
    mask = jnp.ones((), bool)
  mask = jnp.broadcast_to(_checks.bool_array(mask, "mask", scores.shape), scores.shape)
  wide = scores.astype(_accumulation_dtype(scores.dtype)) / temperature
  return NORMALIZERS[kind](wide, mask).astype(scores.dtype)


def _check_weights(regions, weights):
  if weights.shape[-1:] != regions.shape[-4:-3]:
    raise ValueError(
        f"weights must have shape (..., N) with N = {regions.shape[-4]} regions, matching "
        f"regions of shape {tuple(regions.shape)}; got {tuple(weights.shape)}")
  _checks.broadcastable(regions.shape[:-4], weights.shape[:-1], "regions and weights")


def weight(regions, weights):
  """Weighs each region: `w_i = a_i * R_i`.

  Args:
    regions: `(..., N, h, w, C)`.
    weights: `(..., N)`, leading axes broadcastable against those of `regions`.

  Returns:
    `(..., N, h, w, C)` weighted regions.
  """
  regions = _checks.float_array(regions, "regions", min_rank=4)
  _checks.nonempty_axis(regions, "regions", -4, "region (N)")
  weights = _checks.float_array(weights, "weights", min_rank=1)
  _check_weights(regions, weights)
  return regions * weights[..., None, None, None].astype(regions.dtype)


AGGREGATIONS = ("sum", "mean", "reassemble")


def aggregate(weighted, mode: str = "sum", *, grid=None, size=None, stride=None,
              image_shape=None, pad: bool = False):
  """Combines weighted regions into one output.

  Args:
    weighted: `(..., N, h, w, C)` weighted regions.
    mode: `"sum"` (`I_att = sum_i w_i`), `"mean"` (the sum over N), or `"reassemble"`
      (every weighted region put back in place: an attended image).
    grid, size, stride, image_shape, pad: the layout, for `"reassemble"` only (as in
      `unpartition`).

  Returns:
    `(..., h, w, C)` for `"sum"`/`"mean"`; `(..., H, W, C)` for `"reassemble"`.
  """
  weighted = _checks.float_array(weighted, "weighted", min_rank=4)
  _checks.nonempty_axis(weighted, "weighted", -4, "region (N)")
  _checks.choice(mode, "mode", AGGREGATIONS)
  if mode == "reassemble":
    if grid is None and size is None:
      raise ValueError("mode='reassemble' puts the regions back in place and needs their "
                       "layout: pass grid= or size= (with image_shape= for windows)")
    return regions_lib._unpartition(weighted, "weighted", grid, size=size, stride=stride,  # pylint: disable=protected-access
                                    image_shape=image_shape, pad=pad)
  total = jnp.sum(weighted, axis=-4, dtype=_accumulation_dtype(weighted.dtype))
  if mode == "mean":
    total = total / weighted.shape[-4]
  return total.astype(weighted.dtype)


def per_region(region_fn: Callable[[jax.Array], jax.Array]) -> ScoreFn:
  """Lifts a function of one region to a `score_fn` over all regions.

  Args:
    region_fn: maps one region `(h, w, C)` to a scalar score `()`.

  Returns:
    A function `(..., N, h, w, C) -> (..., N)` applying `region_fn` to every region.
  """
  _checks.function(region_fn, "region_fn", "a function of one region `(h, w, C)`")
  def score_fn(regions):
    regions = _checks.float_array(regions, "regions", min_rank=4)
    flat = regions.reshape((-1,) + regions.shape[-3:])
    scores = _checks.called(jax.vmap(region_fn), "region_fn", flat)
    if getattr(scores, "shape", None) != flat.shape[:1]:
      raise ValueError(
          f"region_fn must map one region of shape {flat.shape[1:]} to a scalar, got "
          + (f"shape {scores.shape[1:]}" if hasattr(scores, "shape") else repr(scores)))
    return scores.reshape(regions.shape[:-3])
  return score_fn

POOLS = ("mean", "max", "meanmax")


def _pool_reductions(pool: str):
  """The reductions of a pooling kind, in the order their results are concatenated."""
  return {"mean": (jnp.mean,), "max": (jnp.max,), "meanmax": (jnp.mean, jnp.max)}[pool]


def pool(regions, pool: str = "mean", axes=(-3, -2)):
  """Summarizes each region by its mean, its max, or both, in float32 for half precision.

  Args:
    regions: an array whose `axes` are the pixels of a region, e.g. `(..., N, h, w, C)`.
    pool: `"mean"`, `"max"`, or `"meanmax"` (the means, then the maxima, on the last axis).
    axes: the axes to pool over.

  Returns:
    `regions` without `axes`, the last axis doubled for `"meanmax"`, in the accumulation
    dtype (float32 for float16/bfloat16 regions, their dtype otherwise).
  """
  _checks.choice(pool, "pool", POOLS)
  wide = regions.astype(_accumulation_dtype(regions.dtype))
  return jnp.concatenate([reduce(wide, axis=axes) for reduce in _pool_reductions(pool)],
                         axis=-1)


# `region_attention`'s arguments `normalize`, `aggregate` and `pool` shadow the functions.
_normalize, _aggregate, _pool = normalize, aggregate, pool


# On XLA:CPU, up to this many regions the weighted sum is unrolled into one elementwise
# loop; beyond, the unrolled HLO compiles slowly and runs slower than XLA's reduction
# (measured on XLA:CPU, 2 cores, by experiments/benchmark_region_op.py: 2x faster at
# N=16, 1.5x at N=64, 2.6x slower at 256), and the sum is a batched matrix-vector
# product instead (`_matvec_grid_sum`: 1.7x faster than the reduction at N=256 and
# 1,024, measured under load). Not measured on GPU or TPU, where the sum is XLA's
# reduction for every N.
MAX_UNROLLED_REGIONS = 64


def _reduced_grid_sum(blocks, weights):
  """`sum_k a_k R_k` for K weight vectors, as XLA's reduction over the grid axes of the
  free reshape.

  Args:
    blocks: `(..., gh, h, gw, w, C)`, the free reshape of an image.
    weights: `(..., K, gh * gw)`.

  Returns:
    `(..., K, h, w, C)` in the promoted dtype of `blocks` and `weights`.
  """
  gh, gw = blocks.shape[-5], blocks.shape[-3]
  scale = weights.reshape(weights.shape[:-1] + (gh, 1, gw, 1, 1))
  return jnp.sum(blocks[..., None, :, :, :, :, :] * scale, axis=(-5, -3))


def _unrolled_grid_sum(blocks, weights):
  """`_reduced_grid_sum` as N multiply-adds, which XLA:CPU fuses into one vectorized loop."""
  gh, gw = blocks.shape[-5], blocks.shape[-3]
  return sum(blocks[..., None, i, :, j, :, :] * weights[..., i * gw + j, None, None, None]
             for i in range(gh) for j in range(gw))


def _matvec_grid_sum(blocks, weights):
  """`_reduced_grid_sum` as one matrix product per row of pixels, then a sum.

  Every row `r` of region row `i` gives `t[i, r, k] = sum_j a[k, i, j] * blocks[i, r, j]`,
  a product of the `(K, gw)` weights with the `(gw, w * C)` row, batched over the
  leading axes, `i` and `r`, which are already adjacent in the free reshape (no
  transpose of `x`); the sum over `i` then reads `K / gw` of the image.
  """
  *lead, gh, h, gw, w, channels = blocks.shape
  lead, count = tuple(lead), weights.shape[-2]
  dtype = jnp.promote_types(blocks.dtype, weights.dtype)
  rows = blocks.reshape(lead + (gh, h, gw, w * channels)).astype(dtype)
  scale = jnp.swapaxes(weights.reshape(weights.shape[:-1] + (gh, gw)), -3, -2)
  scale = jnp.broadcast_to(scale[..., :, None, :, :], lead + (gh, h, count, gw)).astype(dtype)
  batch = tuple(range(len(lead) + 2))
  per_row = jax.lax.dot_general(scale, rows,
                                (((len(batch) + 1,), (len(batch),)), (batch, batch)))
  total = jnp.swapaxes(jnp.sum(per_row, axis=len(lead)), -3, -2)
  return total.reshape(lead + (count, h, w, channels))


@jax.custom_jvp
def _grid_sum(blocks, weights):
  """`_reduced_grid_sum`, computed on XLA:CPU for one weight vector as
  `_unrolled_grid_sum` for few regions and as `_matvec_grid_sum` for many.

  The form is chosen by `jax.lax.platform_dependent` when lowering, so one jitted or
  exported function stays portable. The derivative is the reduction's on every
  platform: the unrolled form's own, transposed for `grad`, would pad every region's
  gradient to the whole image and add N of them (N passes over `x`), while the
  reduction's transpose is one broadcast multiply for the blocks and one reduction for
  the weights.
  """
  gh, gw = blocks.shape[-5], blocks.shape[-3]
  if weights.shape[-2] > 1:
    # Windows (several weight vectors): when `dx`'s cotangent depended on `y` (e.g. a
    # loss of y**2), XLA:CPU fused the unrolled or matrix-vector sum into `dx`'s loop and
    # recomputed it for every pixel (windows of 128 at stride 64 on (8, 512, 512, 16):
    # 7.7 s instead of 0.16 s); XLA's reduction is not fused into it.
    cpu_form = _reduced_grid_sum
  else:
    cpu_form = _unrolled_grid_sum if gh * gw <= MAX_UNROLLED_REGIONS else _matvec_grid_sum
  return jax.lax.platform_dependent(blocks, weights, cpu=cpu_form, default=_reduced_grid_sum)


@_grid_sum.defjvp
def _grid_sum_jvp(primals, tangents):
  (blocks, weights), (blocks_dot, weights_dot) = primals, tangents
  # Transposed for `grad`, the weights' term gives `da_k = <R_k, dy>`. As a reduction,
  # XLA:CPU first writes `dy` broadcast to the whole image (measured: a 32 MiB buffer
  # for 32 MiB of `x`); as matrix-vector products it reads `x` once (fwd+bwd 1.2-1.4x
  # faster at 16 to 1,024 regions, measured under load).
  weights_term = jax.lax.platform_dependent(blocks, weights_dot, cpu=_matvec_grid_sum,
                                            default=_reduced_grid_sum)
  # One reduction per weight vector: transposed, their broadcast multiplies add up in one
  # elementwise pass writing `dx`; one reduction over all K transposes to a reduction
  # over K of a K-times-`x` product (windows at stride half their size, K = 4: fwd+bwd
  # 3.1-4.7x the grid's time per element that way, 1.3-1.8x this way, measured on XLA:CPU).
  blocks_term = jnp.concatenate([_reduced_grid_sum(blocks_dot, weights[..., k:k + 1, :])
                                 for k in range(weights.shape[-2])], axis=-4)
  return _grid_sum(blocks, weights), blocks_term + weights_term


def _block_layout(layout):
  """The grid of blocks that regions of `layout` are made of, and the blocks per region.

  A window whose size is a multiple `(mh, mw)` of its stride is `mh x mw` blocks of
  the stride's size, and the blocks tile the padded image: `(gh + mh - 1, gw + mw - 1)`
  of them. A grid is the case `(1, 1)`. Returns None for windows whose size is not a
  multiple of their stride.
  """
  if any(size % stride for size, stride in zip(layout.size, layout.stride)):
    return None
  multiples = tuple(size // stride for size, stride in zip(layout.size, layout.stride))
  counts = tuple(n + m - 1 for n, m in zip(layout.counts, multiples))
  return layout._replace(counts=counts, size=layout.stride), multiples


def _blocks(x, layout):
  """The free reshape `(..., bh, sh, bw, sw, C)` of `(..., H, W, C)` into the blocks of
  `_block_layout(layout)` (after padding the image to `layout.padded`)."""
  blocks, _ = _block_layout(layout)
  (bh, bw), (sh, sw) = blocks.counts, blocks.size
  x = regions_lib.pad_image(x, layout)
  return x.reshape(x.shape[:-3] + (bh, sh, bw, sw, x.shape[-1]))


def _shifted_weights(weights, layout):
  """Per block of a region, the weight each block carries there.

  The output of a weighted sum over windows of `mh x mw` blocks is itself `mh x mw`
  blocks; its block `(u, v)` is `sum_{i,j} a[i, j] * B[i + u, j + v]`, a weighted sum
  over the block grid with `a` shifted by `(u, v)`.

  Args:
    weights: `(..., N)`, `N = gh * gw` regions of `layout`.

  Returns:
    `(..., mh * mw, bh * bw)`: one weight vector over the blocks per output block.
  """
  blocks, (mh, mw) = _block_layout(layout)
  grid = weights.reshape(weights.shape[:-1] + layout.counts)
  no_pad = [(0, 0)] * (grid.ndim - 2)
  shifted = jnp.stack([jnp.pad(grid, no_pad + [(u, mh - 1 - u), (v, mw - 1 - v)])
                       for u in range(mh) for v in range(mw)], axis=-3)
  return shifted.reshape(shifted.shape[:-2] + (blocks.num_regions,))


def _weighted_block_sum(x, weights, layout, mode):
  """`aggregate(weight(partition(x), a), mode)` reading `x` in place, for a grid (one
  pass) or for windows whose size is a multiple of their stride (on XLA:CPU 2-4x the
  grid's forward time, `_grid_sum`).

  Works on the free reshape of `x` into blocks and never materializes the regions, the
  weighted regions or a transposed copy: an einsum over the `(..., N, h, w, C)` regions
  lowers on XLA:CPU to a transpose plus a batched matmul, 10x slower, and gathering
  overlapping windows copies every pixel `mh * mw` times (measured on XLA:CPU,
  docs/design.md).

  Args:
    x: `(..., H, W, C)` image.
    weights: `(..., N)`.
    layout: the regions' layout (`_block_layout` is not None).
    mode: "sum" or "mean"; "reassemble" on a grid.
  """
  blocks = _blocks(x, layout)
  if mode == "reassemble":
    scale = weights.reshape(weights.shape[:-1] + (layout.counts[0], 1, layout.counts[1],
                                                  1, 1)).astype(x.dtype)
    padded = (blocks * scale).reshape(x.shape[:-3] + layout.padded + x.shape[-1:])
    return padded[..., :layout.image[0], :layout.image[1], :]
  # float32 weights promote the products and the sum of half-precision images.
  shifted = _shifted_weights(weights.astype(_accumulation_dtype(x.dtype)), layout)
  _, (mh, mw) = _block_layout(layout)
  total = einops.rearrange(_grid_sum(blocks, shifted), "... (u v) h w c -> ... (u h) (v w) c",
                           u=mh, v=mw)
  if mode == "mean":
    total = total / layout.num_regions
  return total.astype(x.dtype)


def _reduce_block_pixels(blocks, reduce):
  """`reduce` (a mean or max) over each block's pixels: `(..., bh, sh, bw, sw, C)` ->
  `(..., bh, bw, C)`.

  On XLA:CPU in two steps, the rows first: reducing the `sh` rows of a block row is an
  elementwise pass over rows of `bw * sw * C` contiguous values, and the second step
  reads `1 / sh` of the image. One reduction over both pixel axes took 1.5x as long
  ((128, 64, 64, 64), 4x4 grid: 12.5 against 8.3 ms, measured on XLA:CPU, 2 cores,
  idle). Not measured on GPU or TPU, which get XLA's one reduction.
  """
  one_step = lambda blocks: reduce(blocks, axis=(-4, -2))
  two_steps = lambda blocks: reduce(reduce(blocks, axis=-4), axis=-2)
  return jax.lax.platform_dependent(blocks, cpu=two_steps, default=one_step)


def _pooled_blocks(x, layout, pool):
  """`pool` of every region, from the blocks: `(..., H, W, C)` -> `(..., N, C')`, dtype of `x`.

  Reduces the free reshape of the blocks over their pixels, so no copy of the regions
  is made; a window's mean is the mean of its blocks' means, its max the max of their
  maxima. On a grid the derivative is already the closed form: a broadcast of the
  pooled gradient over each region (divided by `h * w` for the mean; for the max,
  split between the pixels that reach it), which XLA fuses with the weighted sum's
  `a_i * dy` into the one pass that writes `dx`.
  """
  blocks = _blocks(x, layout)
  _, (mh, mw) = _block_layout(layout)
  (gh, gw) = layout.counts
  parts = []
  for reduce in _pool_reductions(pool):
    per_block = _reduce_block_pixels(blocks, reduce)  # (..., bh, bw, C)
    if (mh, mw) != (1, 1):
      per_block = reduce(jnp.stack([per_block[..., u:u + gh, v:v + gw, :]
                                    for u in range(mh) for v in range(mw)]), axis=0)
    parts.append(per_block)
  pooled = jnp.concatenate(parts, axis=-1)
  return pooled.reshape(pooled.shape[:-3] + (layout.num_regions, pooled.shape[-1])).astype(
      x.dtype)


def region_attention(x, score_fn: ScoreFn, grid=None, *, size=None, stride=None,
                     pad: bool = False, normalize: str = "softmax",
                     aggregate: str = "sum", mask=None, temperature=1.0,
                     pool: str | None = None):
  """Region attention: scores, weights and the weighted combination of regions.

  Args:
    x: `(..., H, W, C)` image or feature map.
    score_fn: maps regions `(..., N, h, w, C)` to scores `(..., N)`; sees all regions
      at once, so it may be recurrent or self-attentive. See `per_region`. With `pool`,
      it maps the pooled regions `(..., N, C')` instead.
    grid, size, stride, pad: the layout, as in `regions.region_layout`. With `pad=True`,
      regions made only of padding are masked out (and pooled with their zeros).
    normalize: how scores become weights, a kind of `normalize`.
    aggregate: `"sum"`, `"mean"` or `"reassemble"`, as in `aggregate`.
    mask: optional boolean `(..., N)` mask of valid regions.
    temperature: passed to `normalize`.
    pool: None (`score_fn` sees whole regions), or `"mean"`, `"max"` or `"meanmax"`:
      `score_fn` sees each region only through `pool(region)`, `(..., N, C')` in the
      dtype of `x` with `C' = 2C` for `"meanmax"`. On a grid the pooling reads the
      image in place, and forward plus backward read `x` three times and write `dx`
      once: pooling, weighted sum, one reduction for the weights' gradient, one fused
      pass writing `dx` (on XLA:CPU each read by a reduction takes 2-4x the time of a
      copy of `x`: BENCHMARKS.md, "Passes over x").

  Windows whose size is a multiple of their stride (e.g. stride half the size) are
  pooled and summed from the blocks of the stride's size they are made of, reading the
  image in place like a grid, rather than gathered: only a scorer of whole regions
  (`pool=None`) and `aggregate="reassemble"` gather them.

  Returns:
    `(y, a)`: `y` is `(..., h, w, C)` for sum/mean or `(..., H, W, C)` for reassemble;
    `a` is the `(..., N)` weights.
  """
  x = _checks.float_array(x, "x", min_rank=3)
  _checks.function(score_fn, "score_fn",
                   "a function of the regions `(..., N, h, w, C)` (or pooled `(..., N, C')`)")
  _checks.choice(normalize, "normalize", NORMALIZERS)
  _checks.choice(aggregate, "aggregate", AGGREGATIONS)
  _checks.real_scalar(temperature, "temperature", positive=True)
  if pool is not None:
    _checks.choice(pool, "pool", POOLS)
  region_args = dict(grid=grid, size=size, stride=stride, pad=pad)
  layout = regions_lib.region_layout(x.shape[-3:-1], **region_args)
  if mask is not None:
    mask = _checks.bool_array(mask, "mask", x.shape[:-3] + (layout.num_regions,))
  in_blocks = _block_layout(layout) is not None
  if pool is not None and in_blocks:
    features = _pooled_blocks(x, layout, pool)
  else:
    features = regions_lib.partition(x, **region_args)
    if pool is not None:
      features = _pool(features, pool).astype(x.dtype)
  scores = _checks.called(score_fn, "score_fn", features)
  expected = x.shape[:-3] + (layout.num_regions,)
  if not hasattr(scores, "shape") or tuple(scores.shape) != expected:
    seen = "regions" if pool is None else f"{pool}-pooled regions"
    raise ValueError(
        f"score_fn must map {seen} of shape {tuple(features.shape)} to scores of shape "
        f"{expected} (..., N), got "
        f"{tuple(getattr(scores, 'shape', ())) or type(scores).__name__}")
  if pad:
    has_pixels = regions_lib.region_mask(x.shape[-3:-1], **region_args).any(axis=(-2, -1))
    mask = has_pixels if mask is None else mask & has_pixels
  weights = _normalize(scores, normalize, mask, temperature)
  if in_blocks and (aggregate != "reassemble" or layout.is_grid):
    return _weighted_block_sum(x, weights, layout, aggregate), weights
  # Overlapping windows put back in place, or windows not made of blocks: the regions.
  regions = features if pool is None else regions_lib.partition(x, **region_args)
  out = _aggregate(weight(regions, weights), aggregate, image_shape=x.shape[-3:-1],
                   **region_args)
  return out, weights
