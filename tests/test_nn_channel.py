"""Channel and spatial attention: shapes, dtypes, published parameter counts, and
NumPy references of the published equations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import regionatt_jax.nn as rn


def _sigmoid(v):
  return 1 / (1 + np.exp(-v))


def _count(params):
  return sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))


MODULES = {
    "se": lambda **kw: rn.SqueezeExcite(reduction=4, **kw),
    "eca": lambda **kw: rn.EfficientChannelAttention(**kw),
    "spatial": lambda **kw: rn.SpatialAttention(**kw),
    "cbam": lambda **kw: rn.CBAM(reduction=4, **kw),
    "coordinate": lambda **kw: rn.CoordinateAttention(reduction=4, **kw),
}


@pytest.mark.parametrize("name", sorted(MODULES))
@pytest.mark.parametrize("shape", [(8, 8, 16), (2, 8, 12, 16), (2, 3, 4, 6, 8)])
def test_keeps_shape_over_leading_axes(name, shape):
  module = MODULES[name]()
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(1), x)
  assert jax.eval_shape(module.apply, variables, x).shape == shape


@pytest.mark.parametrize("name", sorted(MODULES))
def test_jit_equals_eager(name):
  module = MODULES[name]()
  x = jax.random.normal(jax.random.key(0), (2, 6, 5, 16))
  variables = module.init(jax.random.key(1), x)
  np.testing.assert_allclose(module.apply(variables, x), jax.jit(module.apply)(variables, x),
                             rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_bfloat16_params_and_compute(name):
  module = MODULES[name](dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 16), jnp.bfloat16)
  variables = module.init(jax.random.key(1), x)
  assert {p.dtype for p in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.bfloat16)}
  y = jax.jit(module.apply)(variables, x)
  assert y.dtype == jnp.bfloat16
  # Values: against float64 in test_half_precision_against_float64.


@pytest.mark.parametrize("name", sorted(MODULES))
def test_init_is_deterministic_in_the_key(name):
  module = MODULES[name]()
  x = jnp.ones((1, 8, 8, 16))
  first, again, other = (module.init(jax.random.key(k), x)["params"] for k in (3, 3, 4))
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(other)))


@pytest.mark.parametrize("channels,reduction", [(64, 16), (256, 16), (32, 8)])
def test_parameter_counts_match_the_papers(channels, reduction):
  x = jnp.ones((1, 8, 8, channels))
  count = lambda module: _count(jax.eval_shape(module.init, jax.random.key(0), x)["params"])
  c, r = channels, reduction
  # SE-Net: FC C->C/r and FC C/r->C, with biases.
  assert count(rn.SqueezeExcite(reduction=r)) == 2 * c * c // r + c // r + c
  # ECA-Net: k = |log2(C)/gamma + b/gamma|_odd with gamma=2, b=1; a bias-free 1-D conv.
  t = int(abs((math.log2(c) + 1) / 2))
  assert count(rn.EfficientChannelAttention()) == (t if t % 2 else t + 1)
  # CBAM: shared MLP C->C/r->C with biases, plus a 7x7 conv from 2 maps to 1, no bias.
  assert count(rn.CBAM(reduction=r)) == 2 * c * c // r + c // r + c + 2 * 7 * 7
  assert count(rn.SpatialAttention()) == 2 * 7 * 7
  # Coordinate attention: m = max(8, C // r); conv1 C->m (+bias), BN (scale, bias),
  # conv_h and conv_w m->C (+bias).
  m = max(8, c // 32)
  assert count(rn.CoordinateAttention()) == (c * m + m) + 2 * m + 2 * (m * c + c)


@pytest.mark.parametrize("channels,kernel", [(64, 3), (256, 5), (512, 5), (2048, 7)])
def test_eca_kernel_size_table(channels, kernel):
  # Values of |(log2 C + 1) / 2|_odd worked out by hand.
  assert rn.eca_kernel_size(channels) == kernel


@pytest.mark.parametrize("module", [rn.SqueezeExcite(reduction=16), rn.CBAM(reduction=16)])
def test_channels_not_divisible_by_reduction_fail_at_init(module):
  with pytest.raises(ValueError, match=r"divisible by reduction.*channels=24, reduction=16"):
    module.init(jax.random.key(0), jnp.ones((1, 4, 4, 24)))


def test_integer_input_is_rejected():
  with pytest.raises(TypeError, match="x .*floating-point"):
    rn.SqueezeExcite(2).init(jax.random.key(0), jnp.ones((1, 4, 4, 4), jnp.int32))


# NumPy references of the published equations, fed the module's own parameters.

def _mlp(v, p):
  hidden = np.maximum(v @ p["reduce"]["kernel"] + p["reduce"]["bias"], 0)
  return hidden @ p["expand"]["kernel"] + p["expand"]["bias"]


def _conv_logits(pooled, kernel):
  """The kxk conv of the pooled maps `(B, H, W, 2)` to one map, by explicit loops
  (cross-correlation, SAME)."""
  k = kernel.shape[0]
  padded = np.pad(pooled, [(0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)])
  logits = np.zeros(pooled.shape[:-1])
  for i in range(pooled.shape[1]):
    for j in range(pooled.shape[2]):
      logits[:, i, j] = np.einsum("bhwc,hwc->b", padded[:, i:i + k, j:j + k], kernel[..., 0])
  return logits


def _spatial(x, kernel):
  """sigmoid(conv7x7([mean_c, max_c]))."""
  return _sigmoid(_conv_logits(np.stack([x.mean(-1), x.max(-1)], -1), kernel))


def _params(module, x):
  variables = module.init(jax.random.key(5), x)
  return variables, jax.tree.map(np.asarray, variables["params"])


def test_squeeze_excite_matches_numpy():
  x = np.random.default_rng(0).normal(size=(2, 5, 6, 8)).astype(np.float32)
  variables, p = _params(rn.SqueezeExcite(reduction=2), x)
  expected = x * _sigmoid(_mlp(x.mean((1, 2)), p["mlp"]))[:, None, None, :]
  np.testing.assert_allclose(rn.SqueezeExcite(2).apply(variables, x), expected, rtol=1e-5, atol=1e-6)


def test_eca_matches_numpy():
  x = np.random.default_rng(1).normal(size=(2, 4, 4, 16)).astype(np.float32)
  module = rn.EfficientChannelAttention(kernel_size=5)
  variables, p = _params(module, x)
  w = p["conv"]["kernel"][:, 0, 0]
  pooled = np.pad(x.mean((1, 2)), [(0, 0), (2, 2)])
  logits = np.stack([pooled[:, c:c + 5] @ w for c in range(16)], -1)
  np.testing.assert_allclose(module.apply(variables, x), x * _sigmoid(logits)[:, None, None],
                             rtol=1e-5, atol=1e-6)


def test_cbam_matches_numpy_and_sows_the_spatial_map():
  x = np.random.default_rng(2).normal(size=(2, 9, 7, 8)).astype(np.float32)
  module = rn.CBAM(reduction=2)
  variables, p = _params(module, x)
  gate = _sigmoid(_mlp(x.mean((1, 2)), p["mlp"]) + _mlp(x.max((1, 2)), p["mlp"]))
  after_channel = x * gate[:, None, None, :]
  spatial = _spatial(after_channel, p["spatial"]["conv"]["kernel"])
  y, state = module.apply(variables, x, mutable=["intermediates"])
  np.testing.assert_allclose(y, after_channel * spatial[..., None], rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(rn.attention_maps(state, (9, 7)), spatial, rtol=1e-4, atol=1e-5)


def test_coordinate_attention_matches_numpy_in_eval_mode():
  x = np.random.default_rng(3).normal(size=(2, 5, 6, 16)).astype(np.float32)
  module = rn.CoordinateAttention(reduction=4)
  variables, p = _params(module, x)
  dense = lambda v, q: v @ q["kernel"] + q["bias"]
  hswish = lambda v: v * np.clip(v + 3, 0, 6) / 6
  # Fresh BatchNorm statistics: mean 0, variance 1.
  bn = lambda v: v / np.sqrt(1 + 1e-5) * p["bn"]["scale"] + p["bn"]["bias"]
  strip_h, strip_w = x.mean(2), x.mean(1)  # (B, H, C), (B, W, C)
  a_h = _sigmoid(dense(hswish(bn(dense(strip_h, p["conv_shared"]))), p["conv_h"]))
  a_w = _sigmoid(dense(hswish(bn(dense(strip_w, p["conv_shared"]))), p["conv_w"]))
  expected = x * a_h[:, :, None, :] * a_w[:, None, :, :]
  np.testing.assert_allclose(module.apply(variables, x, train=False), expected, rtol=1e-4, atol=1e-5)


def test_coordinate_attention_updates_batch_stats_only_in_training():
  x = jax.random.normal(jax.random.key(0), (4, 6, 6, 16)) + 3.0
  module = rn.CoordinateAttention(reduction=4)
  variables = module.init(jax.random.key(1), x)
  _, state = module.apply(variables, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(state["batch_stats"]["bn"]["mean"], variables["batch_stats"]["bn"]["mean"])
  _, state = module.apply(variables, x, train=False, mutable=["batch_stats"])
  np.testing.assert_array_equal(state["batch_stats"]["bn"]["mean"],
                                variables["batch_stats"]["bn"]["mean"])


# Half precision against float64. Each module rounds every intermediate (pooled
# statistics, each layer's output, the gate, the product) once to its dtype, with
# relative error u = eps/2, and pools in float32. With `M_z` the float64 magnitude of the
# gate logits (the same layers run on absolute values), an error of at most
# `rounded_layers * u * M_z` in the logits moves a sigmoid gate g by at most a quarter of
# that; the gated output `x * g` is rounded once more:
#     |y - y64| <= 2 * (u |y64| + |x| (u g + (rounded_layers * u * M_z) / 4)),
# the factor 2 covering products of (1 + u) terms and the float32 pooling.

def _gate_bound(x, y, gate, logit_magnitude, rounded_layers, u):
  return 2 * (u * np.abs(y) + np.abs(x) * (u * gate + rounded_layers * u * logit_magnitude / 4))


def _se_half(x, p, mean):
  """SE's output, gate and bound, for the spatial mean `mean` (B, C) of x."""
  gate = _sigmoid(_mlp(mean, p["mlp"]))[:, None, None, :]
  magnitude = _mlp(np.abs(mean), jax.tree.map(np.abs, p["mlp"]))[:, None, None, :]
  return x * gate, gate, magnitude


def _eca_half(x, p, mean):
  w = p["conv"]["kernel"][:, 0, 0]
  pad = len(w) // 2
  conv = lambda v, w: np.stack([np.pad(v, [(0, 0), (pad, pad)])[:, c:c + len(w)] @ w
                                for c in range(v.shape[-1])], -1)
  gate = _sigmoid(conv(mean, w))[:, None, None, :]
  return x * gate, gate, conv(np.abs(mean), np.abs(w))[:, None, None, :]


def _spatial_half(x, p, mean):
  del mean  # spatial attention pools over channels
  kernel = p["conv"]["kernel"]
  pooled = np.stack([x.mean(-1), x.max(-1)], -1)
  gate = _sigmoid(_conv_logits(pooled, kernel))[..., None]
  return x * gate, gate, _conv_logits(np.abs(pooled), np.abs(kernel))[..., None]


HALF_MODULES = {  # module, its NumPy reference, rounded layers before the gate
    "se": (lambda **kw: rn.SqueezeExcite(reduction=4, **kw), _se_half, 3),
    "eca": (lambda **kw: rn.EfficientChannelAttention(kernel_size=5, **kw), _eca_half, 2),
    "spatial": (lambda **kw: rn.SpatialAttention(kernel_size=5, **kw), _spatial_half, 2),
}


def _half_case(name, dtype, image):
  make, reference, rounded_layers = HALF_MODULES[name]
  # Pixels of one sign per channel: a 64x64 map's spatial sum reaches +-6000, where a
  # half-precision running sum no longer moves by one pixel.
  rng = np.random.default_rng(4)
  signs = np.where(rng.random(16) < 0.5, -1.0, 1.0)
  x = jnp.asarray(rng.uniform(0.5, 2, (2,) + image + (16,)) * signs, dtype)
  module = make(dtype=dtype, param_dtype=dtype)
  variables = module.init(jax.random.key(6), x)
  y = np.asarray(jax.jit(module.apply)(variables, x), np.float64)
  x64 = np.asarray(x, np.float64)  # the same rounded pixels and parameters, in float64
  params = jax.tree.map(lambda v: np.asarray(v, np.float64), variables["params"])
  u = float(jnp.finfo(dtype).eps) / 2
  want, gate, magnitude = reference(x64, params, x64.mean((1, 2)))
  bound = _gate_bound(x64, want, gate, magnitude, rounded_layers, u)
  return x64, params, y, want, bound, reference


@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float16])
@pytest.mark.parametrize("name", sorted(HALF_MODULES))
@pytest.mark.parametrize("image", [(5, 6), (64, 64)], ids=["small", "large_sums"])
def test_half_precision_against_float64(name, dtype, image):
  x64, params, y, want, bound, reference = _half_case(name, dtype, image)
  error = np.abs(y - want)
  assert (error <= bound).all(), (error.max(), np.unravel_index((error - bound).argmax(), error.shape))
  if name != "spatial" and image == (64, 64):
    # The bound has power: the spatial mean accumulated in half precision breaks it.
    pixels = x64.reshape(2, -1, 16)
    naive_sum = pixels[:, 0].astype(dtype)
    for k in range(1, pixels.shape[1]):
      naive_sum = (naive_sum + pixels[:, k].astype(dtype)).astype(dtype)
    naive, _, _ = reference(x64, params, np.asarray(naive_sum, np.float64) / pixels.shape[1])
    assert (np.abs(naive - want) > bound).any()
