"""Region scorers: shapes over leading axes, jit, dtypes, init, and which regions each
score can depend on."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import regionatt_jax.nn as rn

SCORERS = {
    "conv": lambda **kw: rn.ConvScorer(features=(4,), **kw),
    "mlp": lambda **kw: rn.MLPScorer(hidden=(8,), pool="meanmax", **kw),
    "gated": lambda **kw: rn.GatedScorer(hidden=8, **kw),
    "gru": lambda **kw: rn.RecurrentScorer(hidden=8, **kw),
    "bilstm": lambda **kw: rn.RecurrentScorer(hidden=8, cell="lstm", bidirectional=True, **kw),
    "self_attention": lambda **kw: rn.SelfAttentionScorer(embed_dim=8, num_heads=2, **kw),
}


def _regions(shape, seed=0):
  return jax.random.normal(jax.random.key(seed), shape)


@pytest.mark.parametrize("name", sorted(SCORERS))
@pytest.mark.parametrize("shape", [(16, 4, 4, 3), (2, 9, 2, 3, 5), (2, 3, 4, 5, 5, 2)])
def test_maps_regions_to_one_score_each(name, shape):
  scorer = SCORERS[name]()
  regions = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(scorer.init, jax.random.key(0), regions)
  assert jax.eval_shape(scorer.apply, variables, regions).shape == shape[:-3]


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_jit_equals_eager_and_init_is_deterministic(name):
  scorer = SCORERS[name]()
  regions = _regions((2, 6, 3, 3, 4))
  init = jax.jit(scorer.init)
  variables, again, other = (init(jax.random.key(k), regions) for k in (0, 0, 1))
  leaves = lambda v: jax.tree.leaves(v["params"])
  assert all(np.array_equal(a, b) for a, b in zip(leaves(variables), leaves(again)))
  assert any(not np.array_equal(a, b) for a, b in zip(leaves(variables), leaves(other)))
  np.testing.assert_allclose(scorer.apply(variables, regions),
                             jax.jit(scorer.apply)(variables, regions), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_bfloat16(name):
  scorer = SCORERS[name](dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  regions = _regions((2, 6, 3, 3, 4)).astype(jnp.bfloat16)
  variables = jax.jit(scorer.init)(jax.random.key(0), regions)
  assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.bfloat16)}
  assert jax.jit(scorer.apply)(variables, regions).dtype == jnp.bfloat16


def _score_changes(scorer, changed_region: int, watched_region: int, n: int = 6) -> bool:
  regions = _regions((1, n, 3, 3, 4))
  variables = jax.jit(scorer.init)(jax.random.key(0), regions)
  edited = regions.at[:, changed_region].add(5.0)
  apply = jax.jit(scorer.apply)
  before, after = apply(variables, regions), apply(variables, edited)
  return not np.allclose(before[:, watched_region], after[:, watched_region], atol=1e-6)


@pytest.mark.parametrize("name", ["conv", "mlp", "gated"])
def test_per_region_scorers_see_only_their_region(name):
  assert _score_changes(SCORERS[name](), changed_region=3, watched_region=3)
  assert not _score_changes(SCORERS[name](), changed_region=3, watched_region=0)


def test_forward_rnn_looks_back_and_bidirectional_rnn_looks_both_ways():
  forward = rn.RecurrentScorer(hidden=8)
  both = rn.RecurrentScorer(hidden=8, bidirectional=True)
  assert _score_changes(forward, changed_region=0, watched_region=5)
  assert not _score_changes(forward, changed_region=5, watched_region=0)
  assert _score_changes(both, changed_region=5, watched_region=0)


def test_self_attention_without_positions_is_permutation_equivariant():
  scorer = rn.SelfAttentionScorer(embed_dim=8, num_heads=2, position_embeddings=False)
  regions = _regions((2, 5, 3, 3, 4))
  variables = jax.jit(scorer.init)(jax.random.key(0), regions)
  apply = jax.jit(scorer.apply)
  order = np.array([3, 0, 4, 1, 2])
  np.testing.assert_allclose(apply(variables, regions[:, order]),
                             apply(variables, regions)[:, order], rtol=1e-5, atol=1e-5)
  assert _score_changes(scorer, changed_region=4, watched_region=0)


def test_self_attention_position_embeddings_break_the_symmetry():
  scorer = rn.SelfAttentionScorer(embed_dim=8, num_heads=2)
  regions = jnp.broadcast_to(_regions((1, 1, 3, 3, 4)), (1, 5, 3, 3, 4))  # 5 equal regions
  variables = jax.jit(scorer.init)(jax.random.key(0), regions)
  assert variables["params"]["positions"].shape == (5, 8)
  assert np.ptp(np.asarray(jax.jit(scorer.apply)(variables, regions))) > 1e-4


def test_pool_regions_mean_and_max():
  regions = _regions((2, 3, 4, 5, 6))
  expected = np.concatenate([np.mean(regions, (-3, -2)), np.max(regions, (-3, -2))], -1)
  np.testing.assert_allclose(rn.pool_regions(regions, "meanmax"), expected, rtol=1e-6)


def test_bad_configuration_is_named():
  regions = _regions((1, 4, 2, 2, 8))
  with pytest.raises(ValueError, match="cell must be one of"):
    rn.RecurrentScorer(cell="rnn").init(jax.random.key(0), regions)
  with pytest.raises(ValueError, match="num_heads must divide embed_dim"):
    rn.SelfAttentionScorer(embed_dim=10, num_heads=4).init(jax.random.key(0), regions)
  with pytest.raises(ValueError, match=r"regions .*rank >= 4"):
    rn.MLPScorer().init(jax.random.key(0), regions[0, 0])
