"""The pure functions against plain NumPy loops (tests/reference.py), eager and jitted."""

import functools
import re

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

import regionatt_jax as ra
from tests import reference

LAYOUTS = {
    "grid": dict(grid=(5, 2)),
    "grid_pad": dict(grid=(6, 4), pad=True),  # regions of 2x4; the last row of regions is all padding
    "windows_overlap": dict(size=(4, 6), stride=(3, 4)),
    "windows_pad": dict(size=(4, 4), stride=(3, 3), pad=True),
    "windows_gaps": dict(size=(2, 2), stride=(4, 4)),
    "grid_as_windows": dict(size=(5, 7), stride=(5, 7)),
    # Sizes multiples of the strides: windows made of blocks, summed without a gather.
    "windows_of_blocks": dict(size=(4, 6), stride=(2, 2)),
    "windows_of_blocks_pad": dict(size=(6, 4), stride=(3, 2), pad=True),
}
IMAGE = (10, 14)


def maybe_jit(fn, use_jit):
  return jax.jit(fn) if use_jit else fn


@pytest.fixture(params=[False, True], ids=["eager", "jit"])
def use_jit(request):
  return request.param


def random_image(shape, seed=0, dtype=np.float32):
  return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def primitives(fn, *args):
  """Names of the primitives in the jaxpr of `fn(*args)`, nested jaxprs included."""
  return set(re.findall(r"= (\w[\w-]*)\[", str(jax.make_jaxpr(fn)(*args))))


def largest_copy(fn, *args):
  """The most elements any transpose, gather or scatter-add in the jaxpr of `fn(*args)`
  (nested jaxprs included) writes; 0 if there is none."""
  found = re.findall(r"\w+:\w+\[([\d,]*)\] = (?:transpose|gather|scatter-add)\[",
                     str(jax.make_jaxpr(fn)(*args)))
  return max((int(np.prod([int(n) for n in shape.split(",") if n])) for shape in found),
             default=0)


@pytest.mark.parametrize("name", LAYOUTS)
def test_partition_matches_loops(name, use_jit):
  kw = LAYOUTS[name]
  x = random_image((2,) + IMAGE + (3,))
  got = maybe_jit(functools.partial(ra.partition, **kw), use_jit)(x)
  np.testing.assert_array_equal(got, reference.partition(x, **kw))


@pytest.mark.parametrize("name", LAYOUTS)
def test_unpartition_matches_loops(name, use_jit):
  kw = LAYOUTS[name]
  (gh, gw), (h, w), _ = reference.layout(IMAGE, **kw)
  regions = random_image((2, gh * gw, h, w, 3), seed=1)
  got = maybe_jit(functools.partial(ra.unpartition, image_shape=IMAGE, **kw), use_jit)(
      regions)
  np.testing.assert_allclose(got, reference.unpartition(regions, IMAGE, **kw),
                             rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", LAYOUTS)
def test_boxes_and_mask_match_loops(name):
  kw = LAYOUTS[name]
  boxes = ra.region_boxes(IMAGE, **kw)
  np.testing.assert_array_equal(boxes, reference.boxes(IMAGE, **kw))
  # The pixel mask marks exactly the pixels inside each region's box.
  mask = ra.region_mask(IMAGE, **kw)
  _, (h, w), _ = reference.layout(IMAGE, **kw)
  for k, (y0, x0, y1, x1) in enumerate(boxes):
    assert mask[k].sum() == (y1 - y0) * (x1 - x0)
    assert mask[k, :y1 - y0, :x1 - x0].all()


@pytest.mark.parametrize("leading", [(), (3,), (2, 2)])
def test_leading_axes(leading):
  x = random_image(leading + IMAGE + (2,))
  flat = x.reshape((-1,) + x.shape[-3:])
  got = ra.partition(x, **LAYOUTS["windows_overlap"])
  want = reference.partition(flat, **LAYOUTS["windows_overlap"])
  np.testing.assert_array_equal(got, want.reshape(leading + want.shape[1:]))


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    leading=st.lists(st.integers(1, 3), max_size=2),
    gh=st.integers(1, 5), gw=st.integers(1, 5), h=st.integers(1, 6), w=st.integers(1, 6),
    c=st.integers(1, 3))
def test_round_trip_grid(leading, gh, gw, h, w, c):
  x = random_image(tuple(leading) + (gh * h, gw * w, c))
  regions = ra.partition(x, grid=(gh, gw))
  chex.assert_shape(regions, tuple(leading) + (gh * gw, h, w, c))
  np.testing.assert_array_equal(ra.unpartition(regions, grid=(gh, gw)), x)


@hypothesis.settings(max_examples=60, deadline=None)
@hypothesis.given(
    height=st.integers(1, 12), width=st.integers(1, 12), gh=st.integers(1, 4),
    gw=st.integers(1, 4), wh=st.integers(1, 5), ww=st.integers(1, 5),
    sh=st.integers(1, 5), sw=st.integers(1, 5), windows=st.booleans())
def test_round_trip_padded(height, width, gh, gw, wh, ww, sh, sw, windows):
  """With padding, unpartition(partition(x)) == x on every pixel some region covers."""
  kw = (dict(size=(wh, ww), stride=(sh, sw), pad=True) if windows
        else dict(grid=(min(gh, height), min(gw, width)), pad=True))
  x = random_image((height, width, 2))
  back = ra.unpartition(ra.partition(x, **kw), image_shape=(height, width), **kw)
  covered = reference.unpartition(np.ones((1,) + ra.partition(x, **kw).shape),
                                  (height, width), **kw)[0] > 0
  np.testing.assert_allclose(np.where(covered, back, 0), np.where(covered, x, 0),
                             rtol=1e-6)
  np.testing.assert_array_equal(np.where(covered, 0, back), 0)


@pytest.mark.parametrize("name", ["grid", "windows_overlap", "grid_pad"])
def test_attention_map_matches_loops(name, use_jit):
  kw = LAYOUTS[name]
  (gh, gw), (h, w), _ = reference.layout(IMAGE, **kw)
  a = random_image((2, gh * gw), seed=2)
  got = maybe_jit(functools.partial(ra.attention_map, image_shape=IMAGE, **kw), use_jit)(a)
  painted = np.broadcast_to(a[:, :, None, None, None], (2, gh * gw, h, w, 1))
  np.testing.assert_allclose(got, reference.unpartition(painted, IMAGE, **kw)[..., 0],
                             rtol=1e-6)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid", "sparsemax", "none"])
@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_normalize_matches_loops(kind, temperature, use_jit):
  scores = random_image((4, 7), seed=3) * 3
  mask = np.random.default_rng(4).random((4, 7)) > 0.3
  mask[1] = False  # a row with no valid region
  got = maybe_jit(functools.partial(ra.normalize, kind=kind, temperature=temperature),
                  use_jit)(scores, mask=mask)
  want = reference.NORMALIZERS[kind](scores / temperature, mask)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  assert not np.any(np.asarray(got)[~mask]), "masked regions must get weight exactly 0"
  if kind in ("softmax", "sparsemax"):
    np.testing.assert_allclose(np.asarray(got).sum(-1)[mask.any(-1)], 1, rtol=1e-5)


@pytest.mark.parametrize("kind", ["softmax", "sigmoid", "sparsemax", "none"])
def test_normalize_gradient_is_finite_with_masks(kind):
  scores = jnp.asarray(random_image((3, 5), seed=5))
  mask = jnp.array([[True] * 5, [False] * 5, [True, False, True, False, False]])
  grad = jax.grad(lambda s: jnp.sum(ra.normalize(s, kind, mask) ** 2))(scores)
  assert np.isfinite(grad).all()
  np.testing.assert_array_equal(np.asarray(grad)[~np.asarray(mask)], 0)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
def test_normalize_low_precision_runs_in_float32(dtype):
  # Softmax over many regions: summing exps in half precision would lose the mass.
  scores = random_image((2, 1024), seed=6)
  got = ra.normalize(jnp.asarray(scores, dtype), "softmax")
  assert got.dtype == dtype
  want = reference.softmax(np.asarray(jnp.asarray(scores, dtype), np.float64),
                           np.ones((2, 1024), bool))
  np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=1e-2)


def test_weight_and_aggregate_match_loops(use_jit):
  kw = LAYOUTS["windows_overlap"]
  regions = random_image((2,) + ra.partition(np.zeros(IMAGE + (3,), np.float32),
                                             **kw).shape, seed=7)
  a = random_image((2, regions.shape[1]), seed=8)
  weighted = maybe_jit(ra.weight, use_jit)(regions, a)
  want = np.stack([[a[b, k] * regions[b, k] for k in range(regions.shape[1])]
                   for b in range(2)])
  np.testing.assert_allclose(weighted, want, rtol=1e-6)
  total = sum(want[:, k] for k in range(want.shape[1]))
  np.testing.assert_allclose(ra.aggregate(weighted, "sum"), total, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(ra.aggregate(weighted, "mean"), total / want.shape[1],
                             rtol=1e-5, atol=1e-6)
  reassembled = ra.aggregate(weighted, "reassemble", image_shape=IMAGE, **kw)
  np.testing.assert_allclose(reassembled, reference.unpartition(want, IMAGE, **kw),
                             rtol=1e-5, atol=1e-6)


def mean_score(region):
  return jnp.mean(region) * 4.0 + jnp.max(region)


def numpy_mean_score(region):
  return float(np.mean(region) * 4.0 + np.max(region))


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("kind", ["softmax", "sparsemax", "sigmoid"])
@pytest.mark.parametrize("mode", ["sum", "mean", "reassemble"])
def test_region_attention_matches_loops(name, kind, mode):
  kw = LAYOUTS[name]
  x = random_image((2,) + IMAGE + (3,), seed=9)
  fn = functools.partial(ra.region_attention, score_fn=ra.per_region(mean_score),
                         normalize=kind, aggregate=mode, **kw)
  y, a = jax.jit(fn)(x)
  want_y, want_a = reference.region_attention(x, numpy_mean_score, kind, mode, **kw)
  np.testing.assert_allclose(a, want_a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-5)


def test_region_attention_with_mask_and_vmap():
  x = random_image((3, 8, 12, 2), seed=10)
  mask = np.array([[True, False, True, True, False, True]] * 3)
  attend = functools.partial(ra.region_attention, score_fn=ra.per_region(mean_score),
                             grid=(2, 3))
  y, a = jax.vmap(lambda xi, mi: attend(xi, mask=mi))(x, mask)
  want_y, want_a = [], []
  for b in range(3):
    regions = reference.partition(x[b:b + 1], grid=(2, 3))[0]
    scores = np.array([numpy_mean_score(r) for r in regions])
    weights = reference.softmax(scores[None], mask[b:b + 1])[0]
    want_a.append(weights)
    want_y.append(sum(weights[k] * regions[k] for k in range(6)))
  np.testing.assert_allclose(a, np.stack(want_a), rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(y, np.stack(want_y), rtol=1e-5, atol=1e-6)


def test_sees_all_regions_at_once():
  """A score_fn that compares regions (softmax over region means, then a rank) works."""
  x = random_image((2, 8, 8, 1), seed=11)
  score_fn = lambda r: jnp.argsort(jnp.argsort(r.mean((-3, -2, -1)), -1), -1).astype(r.dtype)
  _, a = ra.region_attention(x, score_fn, grid=(2, 2), normalize="none")
  means = reference.partition(x, grid=(2, 2)).mean((-3, -2, -1))
  np.testing.assert_array_equal(a, np.argsort(np.argsort(means, -1), -1))


@pytest.mark.parametrize("name", ["grid", "windows_overlap", "grid_pad", "windows_of_blocks_pad"])
@pytest.mark.parametrize("mode", ["sum", "reassemble"])
def test_region_attention_gradients(name, mode):
  kw = LAYOUTS[name]
  x = jnp.asarray(random_image((1, 10, 14, 2), seed=12))
  fn = lambda x: ra.region_attention(x, ra.per_region(jnp.mean), normalize="softmax",
                                     aggregate=mode, **kw)[0]
  check_grads(fn, (x,), order=1, modes=["rev", "fwd"], atol=2e-2, rtol=2e-2)


def numpy_pool(region, pool):
  """A region `(h, w, C)` -> its pooled `(C',)`, by the definition of `pool=`."""
  parts = {"mean": [region.mean((0, 1))], "max": [region.max((0, 1))],
           "meanmax": [region.mean((0, 1)), region.max((0, 1))]}[pool]
  return np.concatenate(parts).astype(np.float64)


def pooled_scorer(channels):
  """A nonlinear scorer of pooled regions `(..., N, C')` and its NumPy twin per region."""
  projection = np.linspace(-1.0, 1.5, channels).astype(np.float32)
  score_fn = lambda pooled: jnp.tanh(pooled @ projection) * 3.0
  return score_fn, lambda features: float(np.tanh(features @ projection) * 3.0)


@pytest.mark.parametrize("name", LAYOUTS)
@pytest.mark.parametrize("kind", list(ra.weighting.NORMALIZERS))
@pytest.mark.parametrize("pool", ra.weighting.POOLS)
def test_pooled_region_attention_matches_loops(name, kind, pool):
  kw = LAYOUTS[name]
  x = random_image((2,) + IMAGE + (3,), seed=15)
  score_fn, numpy_score = pooled_scorer(6 if pool == "meanmax" else 3)
  mode = {"grid": "mean", "windows_overlap": "reassemble"}.get(name, "sum")
  y, a = jax.jit(functools.partial(ra.region_attention, score_fn=score_fn, normalize=kind,
                                   aggregate=mode, pool=pool, **kw))(x)
  want_y, want_a = reference.region_attention(
      x, lambda region: numpy_score(numpy_pool(region, pool)), kind, mode, **kw)
  np.testing.assert_allclose(a, want_a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["grid", "grid_pad", "windows_overlap", "windows_of_blocks",
                                  "windows_of_blocks_pad"])
@pytest.mark.parametrize("pool", ra.weighting.POOLS)
def test_pooled_region_attention_gradients(name, pool):
  x = jnp.asarray(random_image((2,) + IMAGE + (2,), seed=16))
  score_fn, _ = pooled_scorer(4 if pool == "meanmax" else 2)
  fn = lambda x: ra.region_attention(x, score_fn, pool=pool, **LAYOUTS[name])[0]
  check_grads(fn, (x,), order=1, modes=["rev", "fwd"], atol=2e-2, rtol=2e-2)


def test_pooled_max_gradient_splits_ties_as_jnp_max():
  # After a ReLU whole regions are 0: every pixel ties for the max.
  x = jnp.maximum(jnp.asarray(random_image((2, 8, 8, 3), seed=17)), 0.0).at[:, :4, :4].set(0)
  score_fn, _ = pooled_scorer(3)
  loss = lambda x, fn, pool: jnp.sum(
      ra.region_attention(x, fn, grid=(2, 2), pool=pool)[0] ** 2)
  grad_pooled = jax.grad(loss)(x, score_fn, "max")
  grad_general = jax.grad(loss)(
      x, lambda regions: score_fn(jnp.max(regions, axis=(-3, -2))), None)
  np.testing.assert_allclose(grad_pooled, grad_general, rtol=1e-5, atol=1e-7)


def test_pooled_region_attention_with_mask_vmap_and_low_precision():
  x = random_image((3, 8, 12, 2), seed=18)
  mask = np.array([[True, False, True, True, False, True]] * 3)
  score_fn, numpy_score = pooled_scorer(4)
  attend = functools.partial(ra.region_attention, score_fn=score_fn, grid=(2, 3),
                             pool="meanmax")
  _, a = jax.vmap(lambda xi, mi: attend(xi, mask=mi))(x, mask)
  regions = reference.partition(x, grid=(2, 3))
  scores = np.array([[numpy_score(numpy_pool(r, "meanmax")) for r in image]
                     for image in regions])
  np.testing.assert_allclose(a, reference.softmax(scores, mask), rtol=1e-5, atol=1e-7)
  y16, _ = attend(jnp.asarray(x, jnp.bfloat16))
  y32, _ = attend(x)
  assert y16.dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(y16, np.float32), y32, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("pool", ["mean", "meanmax"])
@pytest.mark.parametrize("layout", [dict(grid=(8, 8)), dict(size=(16, 16), stride=(8, 8))],
                         ids=["grid", "windows_of_blocks"])
def test_pooled_forward_and_backward_read_the_image_in_place(pool, layout):
  """Pooling, weighted sum and their gradients work on the free reshape of x (windows:
  of their blocks): nothing copied is larger than a window output, a sixteenth of x."""
  score_fn, _ = pooled_scorer(16 if pool == "meanmax" else 8)
  loss = lambda x: jnp.sum(ra.region_attention(x, score_fn, pool=pool, **layout)[0] ** 2)
  x = jnp.zeros((2, 64, 64, 8))
  assert "reduce_sum" in primitives(jax.value_and_grad(loss), x)
  assert largest_copy(jax.value_and_grad(loss), x) <= x.size // 16


@pytest.mark.parametrize("kind", ["softmax", "sigmoid", "sparsemax"])
def test_normalize_gradients(kind):
  scores = jnp.asarray(random_image((2, 6), seed=13))
  check_grads(lambda s: ra.normalize(s, kind), (scores,), order=2, modes=["rev"],
              atol=2e-2, rtol=2e-2)


def half_precision_bound(dtype, num_terms, magnitude, output):
  """How far a half-precision weighted sum may lie from the float64 one.

  The library rounds each score and each weight once to `dtype` (relative error u = eps/2
  each, so eps on every term a_k R_k), sums `num_terms` terms in float32 (at most
  `num_terms` float32 roundings of the running sum) and rounds the result once (u).

  Args:
    dtype: the half-precision dtype.
    num_terms: N, the length of the reduction.
    magnitude: `sum_k |a_k| |R_k|` in float64, elementwise.
    output: the float64 result, elementwise.
  """
  eps, eps32 = float(jnp.finfo(dtype).eps), float(jnp.finfo(jnp.float32).eps)
  return (eps + num_terms * eps32) * magnitude + eps / 2 * np.abs(output)


def accumulated_in(dtype, terms):
  """`sum_k terms[:, k]` accumulated left to right in `dtype`, as a naive kernel would."""
  terms = np.asarray(terms).astype(dtype)
  total = terms[:, 0]
  for k in range(1, terms.shape[1]):
    total = (total + terms[:, k]).astype(dtype)
  return total.astype(np.float64)


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("image,grid", [((16, 16), (8, 8)), ((64, 64), (32, 32))],
                         ids=["64_regions_unrolled", "1024_regions_large_sums"])
def test_region_attention_half_precision_against_float64(dtype, image, grid):
  # Positive pixels in [1, 2] and sigmoid weights: the sum over 1024 regions reaches
  # ~1000, where a half-precision running sum no longer moves by one term.
  rng = np.random.default_rng(14)
  x = jnp.asarray(rng.uniform(1, 2, (2,) + image + (3,)), dtype)
  y, a = jax.jit(lambda x: ra.region_attention(x, ra.per_region(jnp.mean), grid=grid,
                                               normalize="sigmoid"))(x)
  assert y.dtype == dtype and a.dtype == dtype
  x64 = np.asarray(x, np.float64)  # the same rounded pixels, in float64
  want_y, want_a = reference.region_attention(x64, lambda r: float(np.mean(r)), "sigmoid",
                                              "sum", grid=grid)
  eps = float(jnp.finfo(dtype).eps)
  np.testing.assert_allclose(np.asarray(a, np.float64), want_a, rtol=eps, atol=0)
  terms = want_a[:, :, None, None, None] * reference.partition(x64, grid=grid)
  bound = half_precision_bound(dtype, terms.shape[1], np.abs(terms).sum(1), want_y)
  error = np.abs(np.asarray(y, np.float64) - want_y)
  assert (error <= bound).all(), (error.max(), bound.min())
  if terms.shape[1] > 64:  # The bound has power: a half-precision accumulation breaks it.
    naive = accumulated_in(dtype, terms)
    assert (np.abs(naive - want_y) > bound).any()


@pytest.mark.parametrize("grid", [(8, 8), (16, 16)], ids=["64_unrolled", "256_reduced"])
def test_grid_sum_both_paths_match_loops(grid, use_jit):
  """8x8 is the largest unrolled grid sum, 16x16 takes XLA's reduction (_reduced_grid_sum)."""
  x = random_image((2, 32, 32, 3), seed=15)
  for mode in ("sum", "mean"):
    fn = functools.partial(ra.region_attention, score_fn=ra.per_region(mean_score),
                           grid=grid, normalize="softmax", aggregate=mode)
    y, a = maybe_jit(fn, use_jit)(x)
    want_y, want_a = reference.region_attention(x, numpy_mean_score, "softmax", mode,
                                                grid=grid)
    np.testing.assert_allclose(a, want_a, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("grid", [(8, 8), (16, 16)])
def test_grid_sum_gradient_matches_loops(grid):
  """The reduction's tangent rule (the JVP of both paths) against the gradient by hand:
  d/dx_p sum(c * y) with fixed weights is c at the pixel's position times its weight."""
  from regionatt_jax import weighting  # pylint: disable=import-outside-toplevel
  layout = ra.region_layout((32, 32), grid=grid)
  x = random_image((32, 32, 2), seed=16)
  a = np.abs(random_image((layout.num_regions,), seed=17))
  c = random_image(layout.size + (2,), seed=18)
  grad_x, grad_a = jax.grad(
      lambda x, a: jnp.sum(c * weighting._weighted_block_sum(x, a, layout, "sum")),
      argnums=(0, 1))(x, a)
  regions = reference.partition(x[None], grid=grid)[0]
  want_a = np.einsum("nhwc,hwc->n", regions, c)
  want_x = reference.unpartition((a[:, None, None, None] * c)[None], (32, 32), grid=grid)[0]
  np.testing.assert_allclose(grad_a, want_a, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(grad_x, want_x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layout", [dict(grid=(4, 4)), dict(grid=(16, 16)),
                                    dict(size=(16, 16), stride=(8, 8)),
                                    dict(size=(8, 8), stride=(4, 4))],
                         ids=["grid_unrolled", "grid_matvec", "windows_unrolled",
                              "windows_matvec"])
def test_weighted_sum_is_one_fused_pass(layout):
  """The sum works on the free reshape of x (windows: of their blocks): no transpose or
  gather of x (the matrix-vector form for many regions multiplies rows of the reshape
  in place); nothing copied is a sixteenth of x (the output and the weights are)."""
  from regionatt_jax import weighting  # pylint: disable=import-outside-toplevel
  layout = ra.region_layout((64, 64), **layout)
  args = jnp.zeros((2, 64, 64, 8)), jnp.zeros((2, layout.num_regions))
  fn = lambda x, a: weighting._weighted_block_sum(x, a, layout, "sum")
  assert "reduce_sum" in primitives(fn, *args)
  assert largest_copy(fn, *args) <= args[0].size // 16


@pytest.mark.parametrize("pool", [None, "meanmax"])
def test_many_regions_match_loops(pool):
  # 72 regions: past MAX_UNROLLED_REGIONS, the CPU sum is the matrix-vector form.
  x = random_image((2, 18, 16, 3), seed=19)
  score_fn, numpy_score = pooled_scorer(6)
  numpy_pooled = lambda region: numpy_score(numpy_pool(region, "meanmax"))
  if pool is None:
    score_fn = lambda regions, fn=score_fn: fn(ra.weighting.pool(regions, "meanmax"))
  y, a = jax.jit(lambda x: ra.region_attention(x, score_fn, grid=(9, 8), pool=pool))(x)
  want_y, want_a = reference.region_attention(x, numpy_pooled, grid=(9, 8))
  np.testing.assert_allclose(a, want_a, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(y, want_y, rtol=1e-4, atol=1e-5)
  check_grads(lambda x: ra.region_attention(x, score_fn, grid=(9, 8), pool=pool)[0],
              (jnp.asarray(x),), order=1, modes=["rev"], atol=2e-2, rtol=2e-2)


def test_jit_traces_once():
  fn = chex.assert_max_traces(n=1)(
      lambda x: ra.region_attention(x, ra.per_region(jnp.mean), grid=(2, 2)))
  jitted = jax.jit(fn)
  for seed in range(3):
    jitted(random_image((2, 8, 8, 1), seed=seed))


# Errors: each names the argument, what it got and what it needs.
ERRORS = [
    (lambda: ra.partition(np.zeros((8, 8)), grid=(2, 2)), ValueError, r"x must have rank >= 3.*\(8, 8\)"),
    (lambda: ra.partition(np.zeros((8, 8, 1), np.int32), grid=(2, 2)), TypeError, r"x must be a real floating.*int32"),
    (lambda: ra.partition(np.zeros((8, 8, 1), np.complex64), grid=(2, 2)), TypeError, r"x must be .*complex64"),
    (lambda: ra.partition(np.zeros((9, 8, 1)), grid=(2, 2)), ValueError, r"grid \(2, 2\) does not divide the image \(9, 8\).*pad=True"),
    (lambda: ra.partition(np.zeros((4, 4, 1)), grid=(8, 1)), ValueError, r"grid \(8, 1\) is larger than the image \(4, 4\)"),
    (lambda: ra.partition(np.zeros((8, 8, 1)), grid=(2, 0)), ValueError, r"grid must be >= 1"),
    (lambda: ra.partition(np.zeros((8, 8, 1)), grid=(2, 2.0)), TypeError, r"grid must be an int or a pair of ints"),
    (lambda: ra.partition(np.zeros((8, 8, 1))), ValueError, r"exactly one of grid= or size="),
    (lambda: ra.partition(np.zeros((8, 8, 1)), size=(3, 3), stride=(2, 2)), ValueError, r"do not cover the image \(8, 8\).*pad=True"),
    (lambda: ra.partition(np.zeros((8, 8, 1)), size=(9, 3)), ValueError, r"size \(9, 3\) is larger than the image"),
    (lambda: ra.unpartition(np.zeros((4, 4, 1)), grid=(2, 2)), ValueError, r"regions must have rank >= 4, got shape \(4, 4, 1\)"),
    (lambda: ra.unpartition(np.zeros((5, 4, 4, 1)), grid=(2, 2)), ValueError, r"regions must have shape \(\.\.\., N, h, w, C\) = \(\.\.\., 4, 4, 4, C\).*\(5, 4, 4, 1\)"),
    (lambda: ra.unpartition(np.zeros((4, 4, 4, 1)), size=(4, 4)), ValueError, r"image_shape is required"),
    (lambda: ra.normalize(np.zeros((2, 3)), "softermax"), ValueError, r"kind must be one of \['none', 'sigmoid', 'softmax', 'sparsemax'\], got 'softermax'"),
    (lambda: ra.normalize(np.zeros((2, 3)), mask=np.ones((2, 4), bool)), ValueError, r"mask must have a shape that broadcasts to \(2, 3\), got \(2, 4\)"),
    (lambda: ra.normalize(np.zeros((2, 3)), mask=np.ones((2, 3))), TypeError, r"mask must be a boolean array, got dtype float"),
    (lambda: ra.normalize(np.zeros((2, 3)), temperature=0.0), ValueError, r"temperature must be a finite real number > 0, got 0.0"),
    (lambda: ra.normalize(np.zeros((2, 3), np.int32)), TypeError, r"scores must be a real floating"),
    (lambda: ra.weight(np.zeros((2, 4, 3, 3, 1)), np.zeros((2, 5))), ValueError, r"weights must have shape \(\.\.\., N\) with N = 4.*got \(2, 5\)"),
    (lambda: ra.aggregate(np.zeros((2, 4, 3, 3, 1)), "max"), ValueError, r"mode must be one of \['mean', 'reassemble', 'sum'\], got 'max'"),
    (lambda: ra.region_attention(np.zeros((2, 8, 8, 1)), lambda r: r.mean((-3, -2)), grid=(2, 2)), ValueError, r"score_fn must map regions of shape \(2, 4, 4, 4, 1\) to scores of shape \(2, 4\).*got \(2, 4, 1\)"),
    (lambda: ra.region_attention(np.zeros((2, 8, 8, 1)), ra.per_region(jnp.mean), grid=(2, 2), normalize="max"), ValueError, r"normalize must be one of"),
    (lambda: ra.region_attention(np.zeros((2, 8, 8, 1)), ra.per_region(jnp.mean), grid=(2, 2), aggregate="concat"), ValueError, r"aggregate must be one of"),
    (lambda: ra.region_attention(np.zeros((2, 8, 8, 1)), ra.per_region(lambda r: r.mean(0)), grid=(2, 2)), ValueError, r"region_fn must map one region of shape \(4, 4, 1\) to a scalar, got shape \(4, 1\)"),
    (lambda: ra.attention_map(np.zeros((2, 5)), grid=(2, 2), image_shape=(8, 8)), ValueError, r"weights must have shape \(\.\.\., N\) with N = 4"),
    (lambda: ra.weight(np.zeros((3, 4, 2, 2, 1)), np.zeros((2, 4))), ValueError, r"regions and weights must have leading axes that broadcast together, got \(3,\) and \(2,\)"),
    (lambda: ra.region_boxes(7, grid=(2, 2)), TypeError, r"image_shape must be a pair \(H, W\) of ints, got 7"),
    (lambda: ra.normalize(np.zeros((2, 1)), mask=np.ones((2, 2), bool)), ValueError, r"mask must have a shape that broadcasts to \(2, 1\), got \(2, 2\)"),
    # Arguments that are not arrays, or not numbers, are named before jnp.asarray sees them.
    (lambda: ra.partition(None, grid=(2, 2)), TypeError, r"x must be an array, got NoneType None"),
    (lambda: ra.partition("img", grid=(2, 2)), TypeError, r"x must be an array, got str 'img'"),
    (lambda: ra.weight(np.zeros((1, 2, 2, 2, 1)), [1.0, "a"]), TypeError, r"weights must be an array, got list"),
    (lambda: ra.normalize(np.zeros((2, 3)), mask="all"), TypeError, r"mask must be an array, got str"),
    (lambda: ra.normalize(np.zeros((2, 3)), temperature=np.float32(np.nan)), ValueError, r"temperature must be a finite real number > 0, got nan"),
    (lambda: ra.normalize(np.zeros((2, 3)), temperature=jnp.float32(0)), ValueError, r"temperature must be a finite real number > 0, got 0.0"),
    (lambda: ra.normalize(np.zeros((2, 3)), temperature=np.inf), ValueError, r"temperature must be a finite real number > 0, got inf"),
    (lambda: ra.normalize(np.zeros((2, 3)), temperature="2"), TypeError, r"temperature must be a finite real number > 0, got str '2'"),
    (lambda: ra.normalize(np.zeros((2, 3)), temperature=None), TypeError, r"temperature must be .*got NoneType None"),
    (lambda: ra.normalize(np.zeros((2, 3)), temperature=np.ones(3)), TypeError, r"temperature must be .* \(a scalar\), got an array of shape \(3,\)"),
    (lambda: ra.normalize(np.zeros((2, 3)), temperature=1 + 2j), TypeError, r"temperature must be .*got complex \(1\+2j\)"),
    (lambda: ra.region_attention(np.zeros((1, 4, 4, 1)), "mean", grid=(2, 2)), TypeError, r"score_fn must be a function of the regions .*got str 'mean'"),
    (lambda: ra.per_region("mean"), TypeError, r"region_fn must be a function of one region"),
    (lambda: ra.normalize(np.zeros((2, 3)), ["softmax"]), TypeError, r"kind must be a str, one of \['none', 'sigmoid', 'softmax', 'sparsemax'\], got list \['softmax'\]"),
    (lambda: ra.aggregate(np.zeros((1, 2, 2, 2, 1)), {"sum"}), TypeError, r"mode must be a str"),
    (lambda: ra.normalize(np.ones((2, 0))), ValueError, r"scores must have at least one entry along its region \(N\) axis \(axis -1\), got shape \(2, 0\)"),
    (lambda: ra.aggregate(np.ones((2, 0, 2, 2, 1))), ValueError, r"weighted must have at least one entry along its region \(N\) axis"),
    (lambda: ra.aggregate(np.ones((2, 3, 2, 2, 1)), "reassemble"), ValueError, r"mode='reassemble' .* needs their layout: pass grid= or size="),
    (lambda: ra.partition(np.zeros((4, 4, 1)), grid=(2, 2), pad="no"), TypeError, r"pad must be a bool, got str 'no'"),
    (lambda: ra.partition(np.zeros((4, 4, 1)), grid=np.array(2.0)), TypeError, r"grid must be an int or a pair of ints, got 2.0"),
]


@pytest.mark.parametrize("call,error,message", ERRORS, ids=[e[2][:40] for e in ERRORS])
def test_errors_name_the_argument(call, error, message):
  with pytest.raises(error, match=message):
    call()


@pytest.mark.parametrize("temperature", [np.float32(0), np.float64(np.nan), np.array(-1.0), 0])
def test_temperature_is_checked_the_same_eager_and_under_jit(temperature):
  scores = jnp.zeros((2, 3))
  for fn in (ra.normalize, jax.jit(lambda s: ra.normalize(s, temperature=temperature))):
    with pytest.raises(ValueError, match="temperature must be a finite real number > 0"):
      fn(scores, temperature=temperature) if fn is ra.normalize else fn(scores)


def test_traced_temperature_is_accepted():
  """A temperature traced under jit has no value at trace time; it divides the scores."""
  scores = jnp.asarray(random_image((2, 5), seed=19))
  got = jax.jit(lambda s, t: ra.normalize(s, temperature=t))(scores, 2.0)
  np.testing.assert_allclose(got, ra.normalize(scores / 2.0), rtol=1e-6)


def test_errors_fire_under_jit_at_trace_time():
  with pytest.raises(ValueError, match=r"grid \(3, 3\) does not divide"):
    jax.jit(lambda x: ra.region_attention(x, ra.per_region(jnp.mean), grid=(3, 3)))(
        jnp.zeros((1, 8, 8, 1)))

