"""AttentionPooling against NumPy versions of the published MIL pooling equations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import regionatt_jax.nn as rn

MASK = np.array([[True, True, False, True, False], [True, True, True, True, True]])


def _softmax_masked(scores, mask):
  e = np.where(mask, np.exp(scores - scores.max(-1, keepdims=True)), 0.0)
  return e / e.sum(-1, keepdims=True)


def _ilse(h, p, gated):
  """Ilse et al. (2018), eq. 9 (attention) and eq. 10 (gated), with the layers' biases."""
  lin = lambda v, q: v @ q["kernel"] + q["bias"]
  hidden = np.tanh(lin(h, p["V"]))
  if gated:
    hidden = hidden * (1 / (1 + np.exp(-lin(h, p["U"]))))
  return lin(hidden, p["w"])[..., 0]


def _pool(kind, h, mask):
  module = rn.AttentionPooling(kind, hidden=6)
  variables = module.init(jax.random.key(0), h, mask)
  z, state = jax.jit(lambda v, h, m: module.apply(v, h, m, mutable=["intermediates"]))(
      variables, h, mask)
  return np.asarray(z), np.asarray(rn.instance_weights(state)), variables


@pytest.mark.parametrize("kind", ["attention", "gated"])
def test_attention_pooling_matches_the_published_equations(kind):
  h = np.random.default_rng(0).normal(size=(2, 5, 7)).astype(np.float32)
  z, weights, variables = _pool(kind, h, MASK)
  p = jax.tree.map(np.asarray, variables["params"]["score"])
  expected_weights = _softmax_masked(_ilse(h, p, kind == "gated"), MASK)
  np.testing.assert_allclose(weights, expected_weights, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(z, np.einsum("bn,bnd->bd", expected_weights, h), rtol=1e-5, atol=1e-6)
  assert ("U" in p) == (kind == "gated")


def test_mean_and_max_pool_only_valid_instances():
  h = np.random.default_rng(1).normal(size=(2, 5, 7)).astype(np.float32)
  z_mean, w_mean, _ = _pool("mean", h, MASK)
  z_max, w_max, _ = _pool("max", h, MASK)
  for b in range(2):
    np.testing.assert_allclose(z_mean[b], h[b, MASK[b]].mean(0), rtol=1e-5)
    np.testing.assert_allclose(z_max[b], h[b, MASK[b]].max(0), rtol=1e-6)
    winners = np.flatnonzero(MASK[b])[h[b, MASK[b]].argmax(0)]
    np.testing.assert_allclose(w_max[b], np.bincount(winners, minlength=5) / 7, rtol=1e-6)
  np.testing.assert_allclose(w_mean, MASK / MASK.sum(-1, keepdims=True), rtol=1e-6)


def test_max_pool_splits_a_feature_among_the_instances_that_reach_its_max():
  # ReLU embeddings: features that are 0 for every valid instance of a bag are common in
  # trained MIL models; crediting them all to instance 0 made it the "most attended".
  h = np.maximum(np.random.default_rng(3).normal(size=(2, 5, 8)), 0).astype(np.float32)
  h[0, 3, 2] = h[0, 1, 2] = h[0, :, 2].max() + 1  # two valid instances share a max
  h[0, 4, 5] = 9.0  # the max of a masked instance does not count
  _, shares, _ = _pool("max", h, MASK)
  expected = np.zeros((2, 5))
  for b in range(2):
    for d in range(8):
      top = max(h[b, n, d] for n in range(5) if MASK[b, n])
      reaching = [n for n in range(5) if MASK[b, n] and h[b, n, d] == top]
      for n in reaching:
        expected[b, n] += 1 / len(reaching) / 8
  assert (h == 0).all(axis=1).any()  # the case the split is for occurs
  np.testing.assert_allclose(shares, expected, rtol=1e-6, atol=1e-7)
  assert shares[0, 0] < 0.5  # instance 0 no longer takes every all-zero feature


@pytest.mark.parametrize("kind", ["attention", "gated", "mean", "max"])
def test_empty_bag_pools_to_zeros(kind):
  h = np.random.default_rng(2).normal(size=(1, 3, 4)).astype(np.float32)
  z, weights, _ = _pool(kind, h, np.zeros((1, 3), bool))
  np.testing.assert_array_equal(z, 0.0)
  np.testing.assert_array_equal(weights, 0.0)


def test_shapes_over_leading_axes_and_bfloat16():
  h = jax.random.normal(jax.random.key(0), (2, 3, 5, 8), jnp.bfloat16)
  module = rn.AttentionPooling("gated", dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  variables = module.init(jax.random.key(1), h)
  assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.bfloat16)}
  z = jax.jit(module.apply)(variables, h)
  assert z.shape == (2, 3, 8) and z.dtype == jnp.bfloat16


def test_bad_arguments_are_named():
  h = jnp.ones((2, 5, 4))
  with pytest.raises(ValueError, match="kind must be one of"):
    rn.AttentionPooling("sum").init(jax.random.key(0), h)
  with pytest.raises(ValueError, match=r"mask must have a shape that broadcasts to \(2, 5\)"):
    rn.AttentionPooling().init(jax.random.key(0), h, jnp.ones((2, 4), bool))
