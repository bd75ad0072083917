"""Region scorers f: regions `(..., N, h, w, C)` -> scores `(..., N)`, a_i = f(R_i).

Every scorer sees all N regions at once (the `score_fn` contract of
`regionatt_jax.region_attention`), so recurrent and self-attentive scorers can relate
regions to each other. They return unnormalized scores; `normalize` turns them into
weights. Pass one as `RegionAttention(scorer=...)` or call `region_attention(x, scorer)`
inside a Flax module.

| scorer | f(R_i) |
|---|---|
| `ConvScorer` | a small CNN run on every region (shared weights), mean pool, Dense 1 |
| `MLPScorer` | an MLP on the pooled region features |
| `GatedScorer` | gated attention of attention-based MIL (Ilse et al., 2018) on pooled features |
| `RecurrentScorer` | GRU/LSTM over the region sequence (row-major), optionally bidirectional |
| `SelfAttentionScorer` | a Transformer block over the regions, optional learned positions |

All but `ConvScorer` are `PooledScorer`s: they see a region only through its pooled
summary (`pool_regions`), and `score_pooled` scores the pooled `(..., N, C')` directly.
`RegionAttention` hands those the pooled regions read in place from the image
(`region_attention(..., pool=scorer.pool)`), which spares a copy of the regions forward
and backward.

`AttentionScore` is the Ilse et al. score on embeddings `(..., N, D) -> (..., N)`, shared
with `AttentionPooling`.
"""

from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from regionatt_jax import _checks
from regionatt_jax import weighting
from regionatt_jax.nn import functional
from regionatt_jax.nn.checked import CheckedModule
from regionatt_jax.nn.conv import Conv

Dtype = Any
ModuleDef = Any

POOLINGS = weighting.POOLS


def _regions(regions, module: str):
  return _checks.float_array(regions, f"{module}: regions (`(..., N, h, w, C)`)", min_rank=4)


def pool_regions(regions, pool: str = "mean", dtype: Dtype | None = None):
  """Summarizes each region by its spatial mean, max, or both, in float32 or wider.

  Args:
    regions: `(..., N, h, w, C)`.
    pool: `"mean"` or `"max"` -> `(..., N, C)`; `"meanmax"` -> `(..., N, 2C)`, mean
      then max (`regionatt_jax.weighting.pool`).
    dtype: dtype of the result (None: the regions').

  Returns:
    `(..., N, C)` or `(..., N, 2C)` region features.
  """
  regions = _regions(regions, "pool_regions")
  _checks.choice(pool, "pool", POOLINGS)
  _checks.float_dtype(dtype, "dtype")
  features = weighting.pool(regions, pool)
  return features.astype(dtype if dtype is not None else regions.dtype)


class PooledScorer(CheckedModule):
  """A scorer that sees each region only through `pool_regions(region, self.pool)`.

  Subclasses have a `pool` attribute and implement `score_pooled`, the scores of the
  pooled regions; calling the scorer on whole regions pools them first.
  """

  def __call__(self, regions):
    """Args: regions: `(..., N, h, w, C)`. Returns: `(..., N)` scores."""
    return self.score_pooled(pool_regions(regions, self.pool))

  def _pooled(self, pooled):
    return functional.pooled_input(pooled, self.dtype, type(self).__name__)


class AttentionScore(CheckedModule):
  """The attention score of attention-based MIL (Ilse et al., 2018) on embeddings.

  Plain: `s_k = w^T tanh(V h_k)`. Gated: `s_k = w^T (tanh(V h_k) * sigmoid(U h_k))`.
  Softmax over k of `s_k` gives the paper's weights a_k. V, U and w carry biases, as in
  the authors' code (w's bias cancels in the softmax).

  Attributes:
    hidden: rows of V and U (D in the paper; 128 there).
    gated: use the gated form.
    dtype: compute dtype (None: inferred).
    param_dtype: parameter dtype.
  """
  hidden: int = 64
  gated: bool = False
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.integer(a.hidden, "AttentionScore: hidden")
    _checks.boolean(a.gated, "AttentionScore: gated")
    _checks.dtypes("AttentionScore", a.dtype, a.param_dtype)

  @nn.compact
  def __call__(self, h):
    """Scores instances.

    Args:
      h: `(..., N, D)` embeddings.

    Returns:
      `(..., N)` scores.
    """
    h = _checks.float_array(h, "AttentionScore: h (`(..., N, D)`)", min_rank=2)
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    return functional.attention_score(h, dense(self.hidden, "V"), dense(1, "w"),
                                      dense(self.hidden, "U") if self.gated else None)


class MLPScorer(PooledScorer):
  """An MLP on pooled region features: `f(R_i) = MLP(pool(R_i))`.

  Attributes:
    hidden: widths of the hidden Dense layers (ReLU after each).
    pool: `"mean"`, `"max"` or `"meanmax"`, see `pool_regions`.
    dtype: compute dtype (None: the regions').
    param_dtype: parameter dtype.
  """
  hidden: Sequence[int] = (64,)
  pool: str = "mean"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.positive_ints(a.hidden, "MLPScorer: hidden")
    _checks.choice(a.pool, "MLPScorer: pool", POOLINGS)
    _checks.dtypes("MLPScorer", a.dtype, a.param_dtype)

  @nn.compact
  def score_pooled(self, pooled):
    """Args: pooled: `(..., N, C')` pooled regions. Returns: `(..., N)` scores."""
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    return functional.mlp_scores(
        self._pooled(pooled),
        [dense(width, f"hidden_{i}") for i, width in enumerate(self.hidden)], dense(1, "out"))


class GatedScorer(PooledScorer):
  """Gated attention (Ilse et al., 2018) on pooled regions: `w^T(tanh(V h) * sigmoid(U h))`.

  Attributes:
    hidden: rows of V and U.
    pool: `"mean"`, `"max"` or `"meanmax"`, see `pool_regions`.
    dtype: compute dtype (None: the regions').
    param_dtype: parameter dtype.
  """
  hidden: int = 64
  pool: str = "mean"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.integer(a.hidden, "GatedScorer: hidden")
    _checks.choice(a.pool, "GatedScorer: pool", POOLINGS)
    _checks.dtypes("GatedScorer", a.dtype, a.param_dtype)

  @nn.compact
  def score_pooled(self, pooled):
    """Args: pooled: `(..., N, C')` pooled regions. Returns: `(..., N)` scores."""
    h = self._pooled(pooled)
    return AttentionScore(self.hidden, gated=True, dtype=self.dtype,
                          param_dtype=self.param_dtype, name="attention")(h)


class ConvScorer(CheckedModule):
  """A small CNN applied to every region with shared weights, then mean pool and Dense 1.

  Attributes:
    features: output channels of the 3x3 (`kernel_size`) conv layers, ReLU after each.
    kernel_size: conv kernel size.
    conv: the conv class (a drop-in for `flax.linen.Conv`).
    dtype: compute dtype (None: the regions').
    param_dtype: parameter dtype.
  """
  features: Sequence[int] = (16, 32)
  kernel_size: int = 3
  conv: ModuleDef = Conv
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.positive_ints(a.features, "ConvScorer: features")
    _checks.integer(a.kernel_size, "ConvScorer: kernel_size")
    _checks.function(a.conv, "ConvScorer: conv", "a conv module class")
    _checks.dtypes("ConvScorer", a.dtype, a.param_dtype)

  @nn.compact
  def __call__(self, regions):
    """Args: regions: `(..., N, h, w, C)`. Returns: `(..., N)` scores."""
    convs = [self.conv(width, (self.kernel_size, self.kernel_size), padding="SAME",
                       dtype=self.dtype, param_dtype=self.param_dtype, name=f"conv_{i}")
             for i, width in enumerate(self.features)]
    return functional.conv_scores(
        _regions(regions, "ConvScorer"), convs,
        nn.Dense(1, dtype=self.dtype, param_dtype=self.param_dtype, name="out"))


CELLS: dict[str, Callable[..., nn.RNNCellBase]] = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}


def _orthogonal_in_float32(key, shape, dtype=jnp.float32):
  """The cells' default orthogonal init, drawn in float32: its QR has no bfloat16 kernel."""
  return nn.initializers.orthogonal()(key, shape, jnp.float32).astype(dtype)


class RecurrentScorer(PooledScorer):
  """A GRU or LSTM run over the pooled regions in row-major order, then Dense 1.

  With `bidirectional=True` a second RNN reads the sequence backwards and the two hidden
  states are concatenated, so every score depends on all regions.

  Attributes:
    hidden: hidden size of the cell.
    cell: `"gru"` or `"lstm"`.
    bidirectional: also run backwards.
    pool: `"mean"`, `"max"` or `"meanmax"`, see `pool_regions`.
    dtype: compute dtype (None: the regions').
    param_dtype: parameter dtype.
  """
  hidden: int = 64
  cell: str = "gru"
  bidirectional: bool = False
  pool: str = "mean"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.integer(a.hidden, "RecurrentScorer: hidden")
    _checks.choice(a.cell, "RecurrentScorer: cell", CELLS)
    _checks.boolean(a.bidirectional, "RecurrentScorer: bidirectional")
    _checks.choice(a.pool, "RecurrentScorer: pool", POOLINGS)
    _checks.dtypes("RecurrentScorer", a.dtype, a.param_dtype)

  @nn.compact
  def score_pooled(self, pooled):
    """Args: pooled: `(..., N, C')` pooled regions. Returns: `(..., N)` scores."""
    h = self._pooled(pooled)
    lead, (n, d) = h.shape[:-2], h.shape[-2:]
    sequence = h.reshape((-1, n, d))  # nn.RNN scans (batch, time, features)
    make_rnn = lambda name: nn.RNN(
        CELLS[self.cell](self.hidden, dtype=self.dtype, param_dtype=self.param_dtype,
                         recurrent_kernel_init=_orthogonal_in_float32),
        name=name)
    if self.bidirectional:
      rnn = nn.Bidirectional(make_rnn("forward"), make_rnn("backward"), name="rnn")
    else:
      rnn = make_rnn("rnn")
    states = rnn(sequence)
    scores = nn.Dense(1, dtype=self.dtype, param_dtype=self.param_dtype, name="out")(states)
    return scores.reshape(lead + (n,))


class SelfAttentionScorer(PooledScorer):
  """Regions attend to each other (one pre-LayerNorm Transformer block), then Dense 1.

  Attributes:
    embed_dim: width of the region embeddings.
    num_heads: attention heads; must divide `embed_dim`.
    position_embeddings: add a learned `(N, embed_dim)` embedding per region position
      (then N is fixed at init).
    mlp_ratio: width of the block's MLP relative to `embed_dim`.
    pool: `"mean"`, `"max"` or `"meanmax"`, see `pool_regions`.
    dtype: compute dtype (None: the regions').
    param_dtype: parameter dtype.
  """
  embed_dim: int = 64
  num_heads: int = 4
  position_embeddings: bool = True
  mlp_ratio: int = 2
  pool: str = "mean"
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.integer(a.embed_dim, "SelfAttentionScorer: embed_dim")
    _checks.integer(a.num_heads, "SelfAttentionScorer: num_heads")
    if a.embed_dim % a.num_heads:
      raise ValueError(
          f"SelfAttentionScorer: num_heads must divide embed_dim, got num_heads="
          f"{a.num_heads}, embed_dim={a.embed_dim}")
    _checks.boolean(a.position_embeddings, "SelfAttentionScorer: position_embeddings")
    _checks.integer(a.mlp_ratio, "SelfAttentionScorer: mlp_ratio")
    _checks.choice(a.pool, "SelfAttentionScorer: pool", POOLINGS)
    _checks.dtypes("SelfAttentionScorer", a.dtype, a.param_dtype)

  @nn.compact
  def score_pooled(self, pooled):
    """Args: pooled: `(..., N, C')` pooled regions. Returns: `(..., N)` scores."""
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = self._pooled(pooled)
    positions = (self.param("positions", nn.initializers.normal(0.02),
                            (h.shape[-2], self.embed_dim), self.param_dtype)
                 if self.position_embeddings else None)
    return functional.self_attention_scores(
        h, positions, nn.Dense(self.embed_dim, name="embed", **kw),
        nn.LayerNorm(name="norm_attention", **kw),
        nn.MultiHeadDotProductAttention(self.num_heads, name="attention", **kw),
        nn.LayerNorm(name="norm_mlp", **kw),
        nn.Dense(self.embed_dim * self.mlp_ratio, name="mlp_in", **kw),
        nn.Dense(self.embed_dim, name="mlp_out", **kw), nn.LayerNorm(name="norm_out", **kw),
        nn.Dense(1, name="out", **kw))
