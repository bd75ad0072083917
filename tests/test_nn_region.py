"""RegionAttention and MultiScaleRegionAttention against the pure functions and NumPy
loops; sown weights and maps; configuration errors."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import regionatt_jax as ra
import regionatt_jax.nn as rn


class MeanScorer(nn.Module):
  """A known scorer: 3 * the mean of each region (no parameters)."""
  dtype: jnp.dtype | None = None  # accepted as MultiScaleRegionAttention passes them
  param_dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, regions):
    return 3.0 * jnp.mean(regions, axis=(-3, -2, -1))


def _softmax(v, axis=-1):
  e = np.exp(v - v.max(axis, keepdims=True))
  return e / e.sum(axis, keepdims=True)


def _numpy_region_attention(x, gh, gw):
  """Loops over a grid: a = softmax(3 mean(R_i)), y = sum_i a_i R_i."""
  h, w = x.shape[-3] // gh, x.shape[-2] // gw
  regions = [x[..., i * h:(i + 1) * h, j * w:(j + 1) * w, :] for i in range(gh) for j in range(gw)]
  weights = _softmax(np.stack([3 * r.mean((-3, -2, -1)) for r in regions], -1))
  y = sum(weights[..., k, None, None, None] * r for k, r in enumerate(regions))
  return y, weights


def _x(shape, seed=0):
  return np.asarray(jax.random.normal(jax.random.key(seed), shape))


def _apply(module, x, **kwargs):
  variables = module.init(jax.random.key(0), x, **kwargs)
  return jax.jit(lambda v, x: module.apply(v, x, mutable=["intermediates"], **kwargs))(variables, x)


@pytest.mark.parametrize("shape,grid", [((8, 8, 3), (2, 2)), ((2, 12, 8, 4), (3, 4)),
                                        ((2, 3, 8, 8, 2), (4, 1))])
def test_equals_pure_region_attention_and_numpy(shape, grid):
  x = _x(shape)
  y, state = _apply(rn.RegionAttention(grid=grid, scorer=MeanScorer()), x)
  pure_y, pure_a = ra.region_attention(x, MeanScorer().bind({}), grid)
  np_y, np_a = _numpy_region_attention(x, *grid)
  sown = state["intermediates"]
  np.testing.assert_allclose(y, pure_y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y, np_y, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(sown["region_weights"][0], np_a, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.sum(sown["region_weights"][0], -1), 1.0, rtol=1e-6)


POOLED_SCORERS = {
    "mlp": lambda pool: rn.MLPScorer(hidden=(8,), pool=pool),
    "gated": lambda pool: rn.GatedScorer(hidden=8, pool=pool),
    "recurrent": lambda pool: rn.RecurrentScorer(hidden=8, bidirectional=True, pool=pool),
    "self_attention": lambda pool: rn.SelfAttentionScorer(embed_dim=8, num_heads=2, pool=pool),
}


@pytest.mark.parametrize("name", POOLED_SCORERS)
@pytest.mark.parametrize("pool,layout", [("mean", dict(grid=(2, 3))),
                                         ("meanmax", dict(grid=(3, 3), pad=True)),
                                         ("max", dict(size=(4, 4), stride=(2, 4)))])
def test_pooled_scorers_read_regions_in_place_with_the_same_values_and_gradients(
    name, pool, layout):
  # The module hands the scorer the pooled image (`score_pooled`); the general path
  # cuts the regions out and lets the scorer pool them: the same function of x.
  x = jnp.asarray(_x((2, 8, 12, 3), seed=3))
  scorer = POOLED_SCORERS[name](pool)
  module = rn.RegionAttention(scorer=scorer, **layout)
  variables = module.init(jax.random.key(0), x)

  def fast(params, x):
    return module.apply({"params": params}, x)

  def general(params, x):
    bound = scorer.bind({"params": params["scorer"]})
    return ra.region_attention(x, bound, **layout)[0]

  loss = lambda fn: jax.jit(jax.value_and_grad(lambda p, x: jnp.sum(fn(p, x) ** 2),
                                               argnums=(0, 1)))
  (value, grads), (want_value, want_grads) = (loss(fast)(variables["params"], x),
                                              loss(general)(variables["params"], x))
  np.testing.assert_allclose(value, want_value, rtol=1e-5)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-6),
               grads, want_grads)


def test_sliding_windows_and_reassemble_match_the_pure_function():
  x = _x((2, 8, 8, 3))
  kwargs = dict(size=(4, 4), stride=(2, 2), aggregate="reassemble", normalize="sigmoid")
  y, _ = _apply(rn.RegionAttention(scorer=MeanScorer(), **kwargs), x)
  expected, _ = ra.region_attention(x, MeanScorer().bind({}), **kwargs)
  assert y.shape == x.shape
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def test_mask_gives_masked_regions_zero_weight():
  x = _x((2, 8, 8, 3))
  mask = np.array([[True, False, True, True], [False, False, True, False]])
  _, state = _apply(rn.RegionAttention(grid=(2, 2), scorer=MeanScorer()), x, mask=mask)
  weights = np.asarray(state["intermediates"]["region_weights"][0])
  np.testing.assert_array_equal(weights[~mask], 0.0)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
  valid_scores = 3 * np.array([x[0, :4, :4].mean(), x[0, 4:, :4].mean(), x[0, 4:, 4:].mean()])
  np.testing.assert_allclose(weights[0, [0, 2, 3]], _softmax(valid_scores), rtol=1e-5)
  np.testing.assert_allclose(weights[1, 2], 1.0, rtol=1e-6)


def test_attention_maps_paint_region_weights_at_image_resolution():
  x = _x((2, 8, 8, 3))
  _, state = _apply(rn.RegionAttention(grid=(2, 2), scorer=MeanScorer()), x)
  weights = np.asarray(state["intermediates"]["region_weights"][0])
  maps = np.asarray(rn.attention_maps(state, (16, 16)))
  assert maps.shape == (2, 16, 16)
  for k, (i, j) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
    np.testing.assert_allclose(maps[:, i * 8:(i + 1) * 8, j * 8:(j + 1) * 8],
                               np.broadcast_to(weights[:, k, None, None], (2, 8, 8)), rtol=1e-6)
  with pytest.raises(ValueError, match="nothing was sown as 'attention_map'"):
    rn.attention_maps({"intermediates": {}}, (16, 16))


def test_default_scorer_in_bfloat16():
  x = _x((2, 8, 8, 4)).astype(jnp.bfloat16)
  module = rn.RegionAttention(grid=(2, 2), dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  variables = module.init(jax.random.key(1), x)
  assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.bfloat16)}
  y = jax.jit(module.apply)(variables, x)
  assert y.shape == (2, 4, 4, 4) and y.dtype == jnp.bfloat16


def test_grid_larger_than_feature_map_fails_at_init_naming_the_module():
  with pytest.raises(ValueError, match=r"RegionAttention: .*feature map .*\(4, 4\).*grid \(8, 8\)"):
    rn.RegionAttention(grid=(8, 8)).init(jax.random.key(0), jnp.ones((1, 4, 4, 2)))


def test_parallel_multiscale_with_uniform_weights_is_the_identity():
  # Zero scores give uniform softmax weights; the N_s gain makes every scale return x.
  class Zero(MeanScorer):
    @nn.compact
    def __call__(self, regions):
      return jnp.zeros(regions.shape[:-3])

  x = _x((2, 8, 8, 3))
  module = rn.MultiScaleRegionAttention(grids=((1, 1), (2, 2), (4, 4)), scorer=Zero)
  y, state = _apply(module, x)
  np.testing.assert_allclose(y, x, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(rn.attention_maps(state, (8, 8)), 1.0, rtol=1e-6)


def test_parallel_multiscale_fuses_the_pure_outputs_with_learned_weights():
  x = _x((2, 8, 8, 3))
  module = rn.MultiScaleRegionAttention(grids=((2, 2), (4, 4)), scorer=MeanScorer)
  variables = module.init(jax.random.key(0), x)
  variables = {"params": {"fusion_logits": jnp.array([0.3, -0.5])}}
  y = module.apply(variables, x)
  beta = _softmax(np.array([0.3, -0.5]))
  expected = sum(b * (g * g) * _numpy_reassemble(x, g) for b, g in zip(beta, (2, 4)))
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-6)


def _numpy_reassemble(x, g):
  h = x.shape[-3] // g
  y = np.empty_like(x)
  _, weights = _numpy_region_attention(x, g, g)
  for i in range(g):
    for j in range(g):
      y[..., i * h:(i + 1) * h, j * h:(j + 1) * h, :] = (
          weights[..., i * g + j, None, None, None] * x[..., i * h:(i + 1) * h, j * h:(j + 1) * h, :])
  return y


def test_coarse_to_fine_weights_are_parent_times_sibling_softmax():
  x = _x((2, 8, 8, 3))
  module = rn.MultiScaleRegionAttention(grids=((2, 2), (4, 4)), mode="coarse_to_fine",
                                        scorer=MeanScorer)
  y, state = _apply(module, x)
  _, coarse = _numpy_region_attention(x, 2, 2)
  fine_scores = np.stack([3 * x[:, i * 2:(i + 1) * 2, j * 2:(j + 1) * 2].mean((1, 2, 3))
                          for i in range(4) for j in range(4)], -1).reshape(2, 4, 4)
  expected = np.zeros((2, 4, 4))
  for pi in range(2):
    for pj in range(2):
      block = fine_scores[:, 2 * pi:2 * pi + 2, 2 * pj:2 * pj + 2].reshape(2, 4)
      expected[:, 2 * pi:2 * pi + 2, 2 * pj:2 * pj + 2] = (
          coarse[:, 2 * pi + pj, None] * _softmax(block)).reshape(2, 2, 2)
  weights = np.asarray(state["intermediates"]["region_weights"][0])
  np.testing.assert_allclose(weights, expected.reshape(2, 16), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)
  fine = [x[:, i * 2:(i + 1) * 2, j * 2:(j + 1) * 2] for i in range(4) for j in range(4)]
  np.testing.assert_allclose(y, sum(weights[:, k, None, None, None] * r for k, r in enumerate(fine)),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["parallel", "coarse_to_fine"])
def test_multiscale_shapes_jit_and_bfloat16(mode):
  x = _x((2, 3, 8, 8, 4)).astype(jnp.bfloat16)
  module = rn.MultiScaleRegionAttention(
      grids=((1, 1), (2, 2), (4, 4)), mode=mode,
      dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  y, state = _apply(module, x)
  assert y.dtype == jnp.bfloat16
  assert y.shape == ((2, 3, 8, 8, 4) if mode == "parallel" else (2, 3, 2, 2, 4))
  assert rn.attention_maps(state, (16, 16)).shape == (2, 3, 16, 16)


def test_multiscale_bad_configuration():
  x = jnp.ones((1, 8, 8, 2))
  with pytest.raises(ValueError, match="refine the previous one"):
    rn.MultiScaleRegionAttention(grids=((2, 2), (4, 3)), mode="coarse_to_fine").init(
        jax.random.key(0), jnp.ones((1, 8, 12, 2)))
  with pytest.raises(ValueError, match=r"MultiScaleRegionAttention: .*grid \(16, 16\) is larger"):
    rn.MultiScaleRegionAttention(grids=((2, 2), (16, 16))).init(jax.random.key(0), x)
  with pytest.raises(ValueError, match="mode must be one of"):
    rn.MultiScaleRegionAttention(mode="pyramid").init(jax.random.key(0), x)
