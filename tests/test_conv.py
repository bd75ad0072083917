"""`regionatt_jax.nn.conv` against `lax.conv_general_dilated` and `flax.linen.Conv`."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax
from jax.test_util import check_grads

from regionatt_jax.nn.conv import Conv, conv2d

# (x shape, kernel shape, padding): per-tap path (>= 16 channels), odd/even/non-square
# kernels, 'VALID' and explicit padding, thin-channel native path, 1x1 matmul path.
CASES = [
    ((2, 7, 9, 16), (3, 3, 16, 24), "SAME"),
    ((2, 8, 8, 16), (2, 4, 16, 16), "SAME"),
    ((1, 9, 7, 20), (5, 3, 20, 16), "VALID"),
    ((2, 6, 6, 16), (3, 3, 16, 16), ((2, 0), (1, 3))),
    ((2, 8, 8, 3), (3, 3, 3, 8), "SAME"),
    ((2, 8, 8, 2), (7, 7, 2, 1), "SAME"),
    ((2, 5, 6, 32), (1, 1, 32, 4), "SAME"),
]


def _reference_conv(x, kernel, padding):
  return lax.conv_general_dilated(x, kernel, (1, 1), padding,
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                  preferred_element_type=jnp.float32)


def _inputs(x_shape, kernel_shape, dtype):
  kx, kk, kd = jax.random.split(jax.random.PRNGKey(sum(x_shape) + sum(kernel_shape)), 3)
  x = jax.random.normal(kx, x_shape).astype(dtype)
  kernel = (jax.random.normal(kk, kernel_shape) / np.sqrt(np.prod(kernel_shape[:3]))).astype(dtype)
  return x, kernel, kd


@pytest.mark.parametrize("x_shape,kernel_shape,padding", CASES)
@pytest.mark.parametrize("dtype,tol", [(jnp.float32, 1e-4), (jnp.bfloat16, 5e-2)])
def test_values_and_gradients_match_lax(x_shape, kernel_shape, padding, dtype, tol):
  x, kernel, key = _inputs(x_shape, kernel_shape, dtype)
  out_ref = _reference_conv(x.astype(jnp.float32), kernel.astype(jnp.float32), padding)
  cotangent = jax.random.normal(key, out_ref.shape)

  def loss(conv, x, kernel):
    return jnp.sum(conv(x, kernel).astype(jnp.float32) * cotangent)

  ours = jax.jit(jax.value_and_grad(lambda x, k: loss(lambda a, b: conv2d(a, b, padding), x, k),
                                    argnums=(0, 1)))
  value, (dx, dkernel) = ours(x, kernel)
  x32, kernel32 = x.astype(jnp.float32), kernel.astype(jnp.float32)
  ref_value, (ref_dx, ref_dkernel) = jax.value_and_grad(
      lambda x, k: loss(lambda a, b: _reference_conv(a, b, padding), x, k), argnums=(0, 1))(
          x32, kernel32)

  assert dx.dtype == dtype and dkernel.dtype == dtype
  np.testing.assert_allclose(conv2d(x, kernel, padding).astype(np.float32), out_ref,
                             rtol=tol, atol=tol)
  np.testing.assert_allclose(value, ref_value, rtol=tol, atol=tol * np.sqrt(out_ref.size))
  for got, want in [(dx, ref_dx), (dkernel, ref_dkernel)]:
    scale = float(jnp.abs(want).max())
    np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=tol, atol=tol * scale)


@pytest.mark.parametrize("x_shape,kernel_shape,padding", [CASES[0], CASES[2], CASES[3]])
def test_custom_vjp_passes_numerical_gradient_check(x_shape, kernel_shape, padding):
  x, kernel, _ = _inputs(x_shape, kernel_shape, jnp.float32)
  check_grads(lambda a, b: conv2d(a, b, padding), (x, kernel), order=1, modes=("rev",),
              atol=1e-2, rtol=1e-2, eps=1e-2)


@pytest.mark.parametrize("input_shape", [(2, 8, 8, 16), (3, 2, 8, 8, 16), (8, 8, 16)])
@pytest.mark.parametrize("kernel_size,padding,strides", [
    ((3, 3), "SAME", 1), (3, "VALID", 1), ((1, 1), "SAME", 1), ((3, 3), "SAME", 2),
    ((7, 7), ((3, 3), (3, 3)), (2, 2)), ((1, 1), "SAME", 2)])
def test_module_is_a_drop_in_for_flax_conv(input_shape, kernel_size, padding, strides):
  x = jax.random.normal(jax.random.PRNGKey(0), input_shape)
  ours, flax_conv = Conv(24, kernel_size, strides=strides, padding=padding), nn.Conv(
      24, (kernel_size,) * 2 if isinstance(kernel_size, int) else kernel_size,
      strides=strides, padding=padding)
  params = ours.init(jax.random.PRNGKey(1), x)
  flax_params = flax_conv.init(jax.random.PRNGKey(1), x)
  chex.assert_trees_all_equal(params, flax_params)  # same names, shapes and initial values
  params = jax.tree.map(lambda p: p + 0.1, params)  # a non-zero bias too
  np.testing.assert_allclose(jax.jit(ours.apply)(params, x), flax_conv.apply(params, x),
                             rtol=1e-5, atol=1e-5)


def test_module_dtype_promotion_follows_flax():
  x = jnp.ones((1, 4, 4, 16), jnp.float32)
  module = Conv(16, (3, 3), dtype=jnp.bfloat16, param_dtype=jnp.float32)
  params = module.init(jax.random.PRNGKey(0), x)
  assert params["params"]["kernel"].dtype == jnp.float32
  assert module.apply(params, x).dtype == jnp.bfloat16


@pytest.mark.parametrize("kwargs,match", [
    ({"strides": 0}, "strides must be"),
    ({"padding": "CIRCULAR"}, "padding must be"),
    ({"kernel_size": (3, 3, 3)}, "kernel_size must be"),
])
def test_module_rejects_unsupported_settings(kwargs, match):
  module = Conv(**{"features": 4, "kernel_size": (3, 3), **kwargs})
  with pytest.raises(ValueError, match=match):
    module.init(jax.random.PRNGKey(0), jnp.ones((1, 6, 6, 2)))


def test_conv2d_rejects_mismatched_inputs():
  with pytest.raises(ValueError, match="kernel must be"):
    conv2d(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 2, 4)))
  with pytest.raises(ValueError, match="x must be"):
    conv2d(jnp.ones((4, 4, 3)), jnp.ones((3, 3, 3, 4)))
  with pytest.raises(TypeError, match="share a float dtype"):
    conv2d(jnp.ones((1, 4, 4, 3)), jnp.ones((3, 3, 3, 4), jnp.bfloat16))
