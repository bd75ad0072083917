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


# NumPy references of each scorer's equations, fed the module's own parameters.

def _sigmoid(v):
  return 1 / (1 + np.exp(-v))


def _dense(v, p):
  return v @ p["kernel"] + p["bias"]


def _layer_norm(v, p, eps=1e-6):
  centred = v - v.mean(-1, keepdims=True)
  return centred / np.sqrt((centred**2).mean(-1, keepdims=True) + eps) * p["scale"] + p["bias"]


def _gelu_tanh(v):
  return 0.5 * v * (1 + np.tanh(np.sqrt(2 / np.pi) * (v + 0.044715 * v**3)))


def _conv_same(x, kernel, bias):
  """3x3 (any odd k) cross-correlation with zero SAME padding, by loops over positions."""
  k = kernel.shape[0]
  padded = np.pad(x, [(0, 0)] * (x.ndim - 3) + [(k // 2, k // 2), (k // 2, k // 2), (0, 0)])
  out = np.zeros(x.shape[:-1] + (kernel.shape[-1],))
  for i in range(x.shape[-3]):
    for j in range(x.shape[-2]):
      out[..., i, j, :] = np.einsum("...hwc,hwcd->...d", padded[..., i:i + k, j:j + k, :],
                                    kernel)
  return out + bias


def _gru(xs, p):
  """Flax's GRUCell over the sequence axis -2 from a zero state: all hidden states."""
  h = np.zeros(xs.shape[:-2] + (p["hn"]["kernel"].shape[0],))
  states = []
  for t in range(xs.shape[-2]):
    x = xs[..., t, :]
    r = _sigmoid(_dense(x, p["ir"]) + h @ p["hr"]["kernel"])
    z = _sigmoid(_dense(x, p["iz"]) + h @ p["hz"]["kernel"])
    n = np.tanh(_dense(x, p["in"]) + r * _dense(h, p["hn"]))
    h = (1 - z) * n + z * h
    states.append(h)
  return np.stack(states, -2)


def _lstm(xs, p):
  """Flax's LSTMCell over the sequence axis -2 from a zero state: all hidden states."""
  h = np.zeros(xs.shape[:-2] + (p["hi"]["kernel"].shape[0],))
  c = np.zeros_like(h)
  states = []
  for t in range(xs.shape[-2]):
    x = xs[..., t, :]
    gate = lambda name: x @ p["i" + name]["kernel"] + _dense(h, p["h" + name])
    i, f, g, o = _sigmoid(gate("i")), _sigmoid(gate("f")), np.tanh(gate("g")), _sigmoid(gate("o"))
    c = f * c + i * g
    h = o * np.tanh(c)
    states.append(h)
  return np.stack(states, -2)


def _self_attention(v, p, num_heads):
  """Multi-head dot-product self-attention over axis -2 (Flax's projections per head)."""
  project = lambda name: np.einsum("...nd,dhk->...nhk", v, p[name]["kernel"]) + p[name]["bias"]
  q, k, values = project("query"), project("key"), project("value")
  logits = np.einsum("...qhk,...nhk->...hqn", q, k) / np.sqrt(q.shape[-1])
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  heads = np.einsum("...hqn,...nhk->...qhk", weights, values)
  assert heads.shape[-2] == num_heads
  return np.einsum("...qhk,hkd->...qd", heads, p["out"]["kernel"]) + p["out"]["bias"]


def _reference_scores(name, regions, p):
  mean = regions.mean((-3, -2))
  if name == "conv":
    h = np.maximum(_conv_same(regions, p["conv_0"]["kernel"], p["conv_0"]["bias"]), 0)
    return _dense(h.mean((-3, -2)), p["out"])[..., 0]
  if name == "mlp":  # pool="meanmax": mean then max
    h = np.concatenate([mean, regions.max((-3, -2))], -1)
    return _dense(np.maximum(_dense(h, p["hidden_0"]), 0), p["out"])[..., 0]
  if name == "gated":
    q = p["attention"]
    gated = np.tanh(_dense(mean, q["V"])) * _sigmoid(_dense(mean, q["U"]))
    return _dense(gated, q["w"])[..., 0]
  if name == "gru":
    return _dense(_gru(mean, p["GRUCell_0"]), p["out"])[..., 0]
  if name == "bilstm":  # forward states, then the backward ones in the original order
    backward = _lstm(mean[..., ::-1, :], p["LSTMCell_1"])[..., ::-1, :]
    return _dense(np.concatenate([_lstm(mean, p["LSTMCell_0"]), backward], -1),
                  p["out"])[..., 0]
  assert name == "self_attention"
  h = _dense(mean, p["embed"]) + p["positions"]
  h = h + _self_attention(_layer_norm(h, p["norm_attention"]), p["attention"], num_heads=2)
  h = h + _dense(_gelu_tanh(_dense(_layer_norm(h, p["norm_mlp"]), p["mlp_in"])), p["mlp_out"])
  return _dense(_layer_norm(h, p["norm_out"]), p["out"])[..., 0]


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scores_match_numpy_reference_of_the_equations(name):
  regions = np.random.default_rng(7).normal(size=(2, 5, 3, 4, 4))
  scorer = SCORERS[name]()
  variables = jax.jit(scorer.init)(jax.random.key(3), regions.astype(np.float32))
  params = jax.tree.map(lambda p: np.asarray(p, np.float64), variables["params"])
  expected = _reference_scores(name, regions, params)
  got = jax.jit(scorer.apply)(variables, regions.astype(np.float32))
  np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
