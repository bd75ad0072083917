"""The equations of the attention modules, as functions of arrays and layers.

Both module APIs call these: the Linen modules in `regionatt_jax.nn` and the NNX modules
in `regionatt_jax.nnx` build their layers (which own the parameters) and pass them here as
callables, so every equation is written once and the two APIs compute the same thing. A
layer argument is any callable on arrays (a bound Linen submodule, an NNX module, a
closure over a BatchNorm's train flag).

Pooled statistics are computed in float32 and cast back to the compute dtype `dtype`.
"""

from collections.abc import Callable, Sequence
from typing import Any

import einops
import flax.linen as nn
import jax
import jax.numpy as jnp

import regionatt_jax as ra
from regionatt_jax import _checks

Layer = Callable[..., jax.Array]
Dtype = Any

#: Normalizers whose weights sum to 1 over the regions.
SUM_TO_ONE = ("softmax", "sparsemax")


def global_mean(x):
  """`(..., H, W, C) -> (..., C)`: the spatial mean, accumulated in float32."""
  return jnp.mean(x.astype(jnp.float32), axis=(-3, -2)).astype(x.dtype)


def _squeeze(x, dtype):
  return jnp.mean(x.astype(jnp.float32), axis=(-3, -2)).astype(dtype)


def bottleneck(s, reduce: Layer, expand: Layer):
  """The excitation MLP of SE and CBAM: `expand(relu(reduce(s)))`."""
  return expand(jax.nn.relu(reduce(s)))


def squeeze_excite(x, mlp: Layer, dtype):
  """SE (Hu et al., 2018): `x * sigmoid(mlp(mean_hw(x)))`, `x` `(..., H, W, C)`."""
  gate = jax.nn.sigmoid(mlp(_squeeze(x, dtype)))
  return x.astype(dtype) * gate[..., None, None, :]


def efficient_channel_attention(x, conv1d: Layer, dtype):
  """ECA (Wang et al., 2020): `x * sigmoid(conv1d(mean_hw(x)))`.

  `conv1d` maps `(..., C, 1) -> (..., C, 1)`: the channels are the length axis of a
  single-feature 1-D convolution.
  """
  logits = conv1d(_squeeze(x, dtype)[..., None])
  return x.astype(dtype) * jax.nn.sigmoid(logits[..., 0])[..., None, None, :]


def spatial_attention(x, conv: Layer, dtype):
  """CBAM's spatial attention: `m = sigmoid(conv([mean_c(x), max_c(x)]))`.

  Returns:
    `(x * m, m)`: the re-weighted `(..., H, W, C)` and the map `(..., H, W)`.
  """
  x32 = x.astype(jnp.float32)
  pooled = jnp.stack([jnp.mean(x32, axis=-1), jnp.max(x32, axis=-1)], axis=-1).astype(dtype)
  attention = jax.nn.sigmoid(conv(pooled)[..., 0])
  return x.astype(dtype) * attention[..., None], attention


def cbam_channel_gate(x, mlp: Layer, dtype):
  """CBAM's channel gate: `x * sigmoid(mlp(mean_hw x) + mlp(max_hw x))`, one shared MLP."""
  x32 = x.astype(jnp.float32)
  logits = (mlp(jnp.mean(x32, axis=(-3, -2)).astype(dtype))
            + mlp(jnp.max(x32, axis=(-3, -2)).astype(dtype)))
  return x.astype(dtype) * jax.nn.sigmoid(logits)[..., None, None, :]


def coordinate_attention(x, conv_shared: Layer, norm: Layer, conv_h: Layer, conv_w: Layer,
                         dtype):
  """Coordinate attention (Hou et al., 2021), with 1x1 convs as Dense layers.

  The strips pooled along W `(..., H, C)` and along H `(..., W, C)` go through one
  shared `conv_shared` + `norm` + h-swish, then `conv_h` / `conv_w` and a sigmoid:
  `y = x * a_h[..., :, None, :] * a_w[..., None, :, :]`.
  """
  height = x.shape[-3]
  x32 = x.astype(jnp.float32)
  strips = jnp.concatenate([jnp.mean(x32, axis=-2), jnp.mean(x32, axis=-3)], axis=-2)
  y = jax.nn.hard_swish(norm(conv_shared(strips.astype(dtype))))
  a_h = jax.nn.sigmoid(conv_h(y[..., :height, :]))
  a_w = jax.nn.sigmoid(conv_w(y[..., height:, :]))
  return x.astype(dtype) * a_h[..., :, None, :] * a_w[..., None, :, :]


def attention_score(h, V: Layer, w: Layer, U: Layer | None = None):  # pylint: disable=invalid-name
  """Ilse et al. (2018): `w^T tanh(V h)`, or gated `w^T (tanh(V h) * sigmoid(U h))`.

  Args:
    h: `(..., N, D)` embeddings.
    V: the `D -> hidden` layer.
    w: the `hidden -> 1` layer.
    U: the gate's `D -> hidden` layer, or None for the plain score.

  Returns:
    `(..., N)` scores.
  """
  hidden = jnp.tanh(V(h))
  if U is not None:
    hidden = hidden * jax.nn.sigmoid(U(h))
  return w(hidden)[..., 0]


def pooled_input(pooled, dtype, module: str):
  """Pooled regions `(..., N, C')` for a pooled scorer's `score_pooled`: checked, and
  in the compute dtype `dtype` (None: theirs)."""
  pooled = _checks.float_array(pooled, f"{module}: pooled regions (`(..., N, C')`)",
                               min_rank=2)
  return pooled if dtype is None else pooled.astype(dtype)


def mlp_scores(h, hidden: Sequence[Layer], out: Layer):
  """`out(relu(... relu(hidden_0(h))))[..., 0]`: `(..., N, D) -> (..., N)`."""
  for layer in hidden:
    h = jax.nn.relu(layer(h))
  return out(h)[..., 0]


def conv_scores(regions, convs: Sequence[Layer], out: Layer):
  """ConvScorer: ReLU convs on every region, spatial mean, `out`: `(..., N, h, w, C) -> (..., N)`."""
  h = regions
  for conv in convs:
    h = jax.nn.relu(conv(h))
  return out(jnp.mean(h.astype(jnp.float32), axis=(-3, -2)).astype(h.dtype))[..., 0]


def self_attention_scores(h, positions, embed: Layer, norm_attention: Layer, attention: Layer,
                          norm_mlp: Layer, mlp_in: Layer, mlp_out: Layer, norm_out: Layer,
                          out: Layer):
  """One pre-LayerNorm Transformer block over region features, then a score per region.

  Args:
    h: `(..., N, D)` pooled region features.
    positions: `(N, E)` learned position embeddings, or None.
    embed, ..., out: the block's layers (`attention` is self-attention `(..., N, E)`).

  Returns:
    `(..., N)` scores.
  """
  h = embed(h)
  if positions is not None:
    h = h + positions.astype(h.dtype)
  h = h + attention(norm_attention(h))
  h = h + mlp_out(jax.nn.gelu(mlp_in(norm_mlp(h))))
  return out(norm_out(h))[..., 0]


def recurrent_states(sequence, step: Callable, carry, reverse: bool = False):
  """Runs `step(carry, x_t) -> (carry, y_t)` over axis -2 of `(B, T, D)`; returns `(B, T, H)`.

  With `reverse=True` the sequence is read backwards and the outputs stay in input order.
  """
  _, states = jax.lax.scan(step, carry, jnp.swapaxes(sequence, 0, 1), reverse=reverse)
  return jnp.swapaxes(states, 0, 1)


def masked_max(h, valid):
  """Per-feature max over valid instances, and the share of the features each one supplies.

  A feature whose max several instances reach is split evenly among them. Crediting it
  to the first (an argmax) made instance 0 look the most attended in trained MIL models,
  where ~44 % of the ReLU features are 0 for every instance of a bag.

  Returns:
    `(pooled (..., D), shares (..., N))`; the shares sum to 1 over valid instances.
  """
  filled = jnp.where(valid[..., None], h.astype(jnp.float32), -jnp.inf)
  top = jnp.max(filled, axis=-2, keepdims=True)  # (..., 1, D)
  reaches = (filled == top) & valid[..., None]
  share = jnp.mean(reaches / jnp.maximum(jnp.sum(reaches, axis=-2, keepdims=True), 1), axis=-1)
  any_valid = jnp.any(valid, axis=-1, keepdims=True)
  return jnp.where(any_valid, top[..., 0, :], 0.0), jnp.where(any_valid, share, 0.0)


def attention_pooling(h, valid, kind: str, score: Layer | None, dtype):
  """Pools a bag `(..., N, D)` to `(..., D)`: attention/gated (by `score`), mean or max.

  Args:
    h: `(..., N, D)` instance embeddings.
    valid: boolean `(..., N)` mask of valid instances.
    kind: `"attention"`, `"gated"`, `"mean"` or `"max"`.
    score: `(..., N, D) -> (..., N)` scores for attention/gated, else unused.
    dtype: dtype of the pooled embedding.

  Returns:
    `(pooled (..., D), weights (..., N))`.
  """
  if kind == "max":
    pooled, weights = masked_max(h, valid)
  else:
    scores = (jnp.zeros(h.shape[:-1], jnp.float32) if kind == "mean"  # uniform softmax
              else score(h))
    weights = ra.normalize(scores, "softmax", mask=valid)
    pooled = jnp.einsum("...n,...nd->...d", weights.astype(jnp.float32),
                        h.astype(jnp.float32))
  return pooled.astype(dtype), weights


def _attend(x, scorer: Layer, grid, **kwargs):
  """`ra.region_attention(x, scorer, grid, **kwargs)`; a pooled scorer (one with
  `score_pooled` and `pool`, e.g. a `regionatt_jax.nn.PooledScorer`) scores the pooled
  regions, read in place from `x`."""
  if hasattr(scorer, "score_pooled"):
    return ra.region_attention(x, scorer.score_pooled, grid, pool=scorer.pool, **kwargs)
  return ra.region_attention(x, scorer, grid, **kwargs)


def region_attention(x, scorer: Layer, grid, *, size, stride, pad, normalize: str,
                     aggregate: str, mask, temperature):
  """`ra.region_attention` plus its weights painted onto `x`'s spatial grid.

  A scorer with a `score_pooled` method and a `pool` attribute sees only the pooled
  regions `(..., N, C')` (`ra.region_attention(..., pool=scorer.pool)`).

  Returns:
    `(y, weights (..., N), attention_map (..., H, W))`.
  """
  region_args = dict(size=size, stride=stride, pad=pad)
  y, weights = _attend(x, scorer, grid, **region_args, normalize=normalize,
                       aggregate=aggregate, mask=mask, temperature=temperature)
  return y, weights, ra.attention_map(weights, grid, **region_args, image_shape=x.shape[-3:-1])


def multiscale_parallel(x, layouts, scorers: Sequence[Layer], fusion_logits, normalize: str):
  """Region attention per grid ("reassemble"), fused by `softmax(fusion_logits)`.

  `y = Σ_s β_s g_s y_s` with `g_s = N_s` for sum-to-one normalizers, else 1.

  Returns:
    `(y (..., H, W, C), gain (..., H, W))`, the per-pixel gain with `y = gain * x`.
  """
  fusion = jax.nn.softmax(fusion_logits.astype(jnp.float32))
  y, gain = 0.0, 0.0
  for s, (layout, scorer) in enumerate(zip(layouts, scorers)):
    y_s, weights = _attend(x, scorer, layout.counts, normalize=normalize,
                           aggregate="reassemble")
    scale = fusion[s] * (layout.num_regions if normalize in SUM_TO_ONE else 1)
    y = y + scale.astype(x.dtype) * y_s
    gain = gain + scale * ra.attention_map(weights, layout.counts, image_shape=x.shape[-3:-1])
  return y, gain


def check_refinement(layouts, module: str):
  """Raises unless every grid's counts are multiples of the previous grid's."""
  for coarse, fine in zip(layouts, layouts[1:]):
    if any(f % c for c, f in zip(coarse.counts, fine.counts)):
      raise ValueError(
          f"{module}: in coarse_to_fine mode every grid must refine the "
          f"previous one, got {coarse.counts} then {fine.counts}")


def multiscale_coarse_to_fine(x, layouts, scorers: Sequence[Layer], normalize: str,
                              aggregate: str):
  """Hierarchical region weights, coarse to fine, then one weighted aggregation.

  Level 0 weights are `normalize(s_0)`; a region at level l gets its parent's weight
  times `normalize` of its score among its siblings.

  Returns:
    `(y, weights (..., N_finest), attention_map (..., H, W))`.
  """

  def hierarchical_weights(finest_regions):
    weights, parent = None, None
    for s, layout in enumerate(layouts):
      regions = finest_regions if s == len(layouts) - 1 else ra.partition(x, layout.counts)
      scores = scorers[s](regions)
      if parent is None:
        weights, parent = ra.normalize(scores, normalize), layout
        continue
      (gh, gw), (fh, fw) = parent.counts, tuple(
          f // c for c, f in zip(parent.counts, layout.counts))
      siblings = einops.rearrange(scores, "... (gh fh gw fw) -> ... (gh gw) (fh fw)",
                                  gh=gh, fh=fh, gw=gw, fw=fw)
      within = ra.normalize(siblings, normalize) * weights[..., :, None]
      weights = einops.rearrange(within, "... (gh gw) (fh fw) -> ... (gh fh gw fw)",
                                 gh=gh, fh=fh, gw=gw, fw=fw)
      parent = layout
    return weights

  finest = layouts[-1].counts
  # The scorer already returns normalized weights, so region_attention must not
  # normalize again; it still runs its one-pass weighted sum.
  y, weights = ra.region_attention(x, hierarchical_weights, finest, normalize="none",
                                   aggregate=aggregate)
  return y, weights, ra.attention_map(weights, finest, image_shape=x.shape[-3:-1])


def attention_net(x, convs: Sequence[Layer], attention: Layer, norm: Layer,
                  classifier: Layer):
  """AttentionNet: ReLU convs, `m = sigmoid(attention(x))`, `classifier(norm(mean(x * m)))`.

  Returns:
    `(float32 logits (..., classes), m (..., H, W))`.
  """
  for conv in convs:
    x = jax.nn.relu(conv(x))
  m = jax.nn.sigmoid(attention(x))[..., 0]
  pooled = global_mean(x * m[..., None].astype(x.dtype))
  return classifier(norm(pooled)).astype(jnp.float32), m


def mi_net(instance_logits, pool: Layer):
  """Instance-level MIL (mi-Net): `P = pool(p_k)` of the instances' positive-class
  probabilities `p_k` (`instance_logits` `(..., N, 2)`); bag logits `(log(1 - P), log P)`."""
  positive = jax.nn.softmax(instance_logits.astype(jnp.float32))[..., 1:]  # (..., N, 1)
  bag = jnp.clip(pool(positive)[..., 0], 1e-7, 1 - 1e-7)
  return jnp.stack([jnp.log1p(-bag), jnp.log(bag)], axis=-1)


def conv_stage(x, conv: Layer, norm: Layer | None, attention: Layer | None):
  """A stage of `SmallCNN(placement="path")`: `attention(relu(norm(conv(x))))`, where a
  `norm` or `attention` of None is left out."""
  x = conv(x)
  if norm is not None:
    x = norm(x)
  x = jax.nn.relu(x)
  return x if attention is None else attention(x)


def small_cnn(x, stages: Sequence[Layer]):
  """`SmallCNN`: the stages in order, a 2x2 max pool (stride 2) between two stages.

  `(..., H, W, C) -> (..., H / 2^(S-1), W / 2^(S-1), C')` for S stages.
  """
  for i, stage in enumerate(stages):
    if i:
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = stage(x)
  return x


def residual_sum(x, branch, attention: Layer | None, downsample: Layer):
  """The end of a residual block: `relu(shortcut(x) + attention(branch))`.

  The attention sits on the residual branch before the add (SE-ResNet, CBAM);
  `downsample` (1x1 conv + BatchNorm) is the shortcut where the branch changes the shape.
  """
  if attention is not None:
    branch = attention(branch)
  if x.shape != branch.shape:
    x = downsample(x)
  return jax.nn.relu(x + branch)
