"""A 2-D convolution whose backward pass is fast on XLA:CPU and native elsewhere.

`Conv` is a drop-in for `flax.linen.Conv` as the models here use it: channels-last
`(..., H, W, Cin)` inputs, any stride (only stride-1 convs get the CPU backward), no
dilation, one feature group, `'SAME'`/`'VALID'` or explicit padding, parameters named
`kernel` `(kh, kw, Cin, Cout)` and `bias` `(Cout,)` with Flax's initializers, and
`dtype`/`param_dtype` promotion. The parameter tree is the same as `flax.linen.Conv`'s,
so either module loads the other's weights.

Why it exists: XLA:CPU computes the weight gradient of a convolution ~2x slower than the
same contraction written as one matmul per kernel tap, `(x shifted by the tap)^T @ dy`,
and the weight gradient is the largest single cost of a convolutional train step there
(see `BENCHMARKS.md` and `experiments/benchmark_conv.py`). `conv2d` is a
`jax.custom_vjp` that keeps XLA's forward convolution and, on CPU, computes the input
gradient as XLA's convolution (measured fastest among the forms tried) and the weight
gradient per tap. The choice is made with `jax.lax.platform_dependent` when the
function is lowered, so one jitted or exported function stays portable: lowered for
GPU or TPU, the backward is the native VJP of the convolution (cuDNN's and the TPU's
own weight-gradient convolutions, no loop). A 1x1 convolution is a plain matmul on
every platform, whose native gradients are already matmuls.
"""

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

_DIMENSION_NUMBERS = ("NHWC", "HWIO", "NHWC")

# Below this many input or output channels the per-tap matmuls are too thin to beat
# XLA's own weight gradient (measured on XLA:CPU, 2 cores: 3->64 3x3 and 2->1 7x7
# convolutions were 2-7x slower per tap), so such convolutions keep the native VJP on
# every platform.
_PER_TAP_MIN_CHANNELS = 16

Padding = str | Sequence[tuple[int, int]]


def _padding_pairs(padding: Padding, kernel_hw: tuple[int, int]) -> tuple[tuple[int, int], ...]:
  """Explicit `((top, bottom), (left, right))` padding for a stride-1 convolution."""
  if isinstance(padding, str):
    if padding == "SAME":
      return tuple(((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel_hw)
    if padding == "VALID":
      return ((0, 0), (0, 0))
    raise ValueError(f"padding must be 'SAME', 'VALID' or two (low, high) pairs, got {padding!r}")
  pairs = tuple(tuple(int(p) for p in pair) for pair in padding)
  if len(pairs) != 2 or any(len(pair) != 2 or min(pair) < 0 for pair in pairs):
    raise ValueError(
        f"padding must be 'SAME', 'VALID' or two non-negative (low, high) pairs, got {padding!r}")
  return pairs


def _native_conv(x, kernel, pads):
  return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_DIMENSION_NUMBERS)


def _input_gradient(dy, kernel, pads):
  """`dx` of a stride-1 convolution: `dy` convolved with the flipped, transposed kernel."""
  kh, kw = kernel.shape[:2]
  transposed_pads = ((kh - 1 - pads[0][0], kh - 1 - pads[0][1]),
                     (kw - 1 - pads[1][0], kw - 1 - pads[1][1]))
  flipped = jnp.flip(kernel, (0, 1)).swapaxes(2, 3)
  return _native_conv(dy, flipped, transposed_pads)


def _weight_gradient(x, dy, kernel_shape, pads):
  """`dkernel` as one matmul per tap: `sum_{b,h,w} x_pad[b, h+i, w+j, :]^T dy[b, h, w, :]`.

  The taps run in a `lax.map` loop rather than unrolled, so that only one shifted copy
  of `x` is alive at a time (measured on XLA:CPU: 66 MB of temporaries instead of 290 MB
  for the 64->128 conv at batch 32, and no slower). The CPU form only: on GPU and TPU
  the loop would replace one native weight-gradient convolution.
  """
  kh, kw, cin, cout = kernel_shape
  batch, out_h, out_w = dy.shape[:3]
  x_padded = jnp.pad(x, ((0, 0), *pads, (0, 0)))
  dy_rows = dy.reshape(-1, cout)

  def tap(index):
    shifted = lax.dynamic_slice(x_padded, (0, index // kw, index % kw, 0),
                                (batch, out_h, out_w, cin))
    return lax.dot_general(shifted.reshape(-1, cin), dy_rows, (((0,), (0,)), ((), ())),
                           preferred_element_type=jnp.float32)

  return lax.map(tap, jnp.arange(kh * kw)).reshape(kernel_shape)


def _per_tap_gradients(x, kernel, dy, pads):
  """`(dx, dkernel)` of XLA:CPU's fast form: a convolution and per-tap matmuls."""
  return (_input_gradient(dy, kernel, pads).astype(x.dtype),
          _weight_gradient(x, dy, kernel.shape, pads).astype(kernel.dtype))


def _native_gradients(x, kernel, dy, pads):
  """`(dx, dkernel)` as JAX differentiates the convolution itself (GPU, TPU)."""
  _, pullback = jax.vjp(functools.partial(_native_conv, pads=pads), x, kernel)
  return pullback(dy)


# `pads` is a static tuple of ints, hence a non-differentiable argument.
@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_per_tap_vjp(x, kernel, pads):
  return _native_conv(x, kernel, pads)


def _conv_fwd(x, kernel, pads):
  return _native_conv(x, kernel, pads), (x, kernel)


def _conv_bwd(pads, residuals, dy):
  x, kernel = residuals
  # Resolved when lowering: a function lowered for several platforms carries both forms
  # and each compiler sees only its own.
  return lax.platform_dependent(
      x, kernel, dy, cpu=functools.partial(_per_tap_gradients, pads=pads),
      default=functools.partial(_native_gradients, pads=pads))


_conv_per_tap_vjp.defvjp(_conv_fwd, _conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, padding: Padding = "SAME") -> jax.Array:
  """Stride-1 2-D convolution with a per-tap-matmul weight gradient on CPU.

  Same values as `lax.conv_general_dilated(x, kernel, (1, 1), padding,
  dimension_numbers=("NHWC", "HWIO", "NHWC"))` and the same gradients (up to float
  summation order); only the backward computation differs, and only on CPU: with at
  least `_PER_TAP_MIN_CHANNELS` input and output channels the weight gradient is one
  matmul per kernel tap, accumulated in float32. On GPU and TPU the backward is the
  convolution's native VJP. A 1x1 unpadded kernel is a matmul everywhere.

  Args:
    x: `(B, H, W, Cin)` input, float.
    kernel: `(kh, kw, Cin, Cout)` kernel of the same dtype as `x`.
    padding: `'SAME'`, `'VALID'` or `((top, bottom), (left, right))`.

  Returns:
    `(B, H', W', Cout)`; `H' = H` for `'SAME'`, `H - kh + 1` for `'VALID'`.
  """
  if x.ndim != 4:
    raise ValueError(f"x must be (B, H, W, Cin), got shape {x.shape}")
  if kernel.ndim != 4 or kernel.shape[2] != x.shape[-1]:
    raise ValueError(
        f"kernel must be (kh, kw, Cin={x.shape[-1]}, Cout), got shape {kernel.shape}")
  if not jnp.issubdtype(x.dtype, jnp.floating) or x.dtype != kernel.dtype:
    raise TypeError(f"x and kernel must share a float dtype, got {x.dtype} and {kernel.dtype}")
  pads = _padding_pairs(padding, kernel.shape[:2])
  if kernel.shape[:2] == (1, 1) and pads == ((0, 0), (0, 0)):
    return jnp.einsum("bhwc,cd->bhwd", x, kernel[0, 0])
  if min(kernel.shape[2:]) < _PER_TAP_MIN_CHANNELS:
    return _native_conv(x, kernel, pads)
  return _conv_per_tap_vjp(x, kernel, pads)


class Conv(nn.Module):
  """Drop-in for `flax.linen.Conv` (2-D) with a fast XLA:CPU backward pass at stride 1.

  On GPU and TPU it lowers to the same convolutions as `flax.linen.Conv`.

  Attributes:
    features: number of output channels `Cout`.
    kernel_size: `(kh, kw)`, or one int for a square kernel.
    strides: an int or `(sh, sw)`; strided convs use XLA's convolution and its VJP.
    padding: `'SAME'`, `'VALID'` or `((top, bottom), (left, right))`.
    use_bias: add a `(Cout,)` bias.
    dtype: computation dtype (default: inferred from inputs and params, as in Flax).
    param_dtype: dtype of the parameters.
    kernel_init: initializer of the `(kh, kw, Cin, Cout)` kernel.
    bias_init: initializer of the bias.
  """
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] = 1
  padding: Padding = "SAME"
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.linear.default_kernel_init
  bias_init: nn.initializers.Initializer = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Convolves `inputs`.

    Args:
      inputs: `(..., H, W, Cin)`; any number of leading batch axes, including none.

    Returns:
      `(..., H', W', features)`.
    """
    kernel_hw, strides = conv_geometry(self.kernel_size, self.strides)
    if inputs.ndim < 3:
      raise ValueError(f"inputs must be (..., H, W, Cin), got shape {inputs.shape}")
    kernel = self.param("kernel", self.kernel_init, (*kernel_hw, inputs.shape[-1], self.features),
                        self.param_dtype)
    bias = (self.param("bias", self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    return conv(inputs, kernel, bias, strides, self.padding, self.dtype)


def conv_geometry(kernel_size: int | Sequence[int],
                  strides: int | Sequence[int]) -> tuple[tuple[int, int], tuple[int, int]]:
  """`(kh, kw), (sh, sw)` of a `Conv`'s `kernel_size` and `strides` (an int means square)."""
  kernel_hw = (kernel_size,) * 2 if isinstance(kernel_size, int) else tuple(kernel_size)
  strides_hw = (strides,) * 2 if isinstance(strides, int) else tuple(strides)
  if len(kernel_hw) != 2:
    raise ValueError(f"kernel_size must be an int or (kh, kw), got {kernel_size!r}")
  if len(strides_hw) != 2 or min(strides_hw) < 1:
    raise ValueError(f"strides must be a positive int or (sh, sw), got {strides!r}")
  return kernel_hw, strides_hw


def conv(inputs: jax.Array, kernel: jax.Array, bias: jax.Array | None,
         strides: tuple[int, int], padding: Padding, dtype: Any = None) -> jax.Array:
  """What `Conv` computes from its parameters (shared by the NNX `Conv`).

  Args:
    inputs: `(..., H, W, Cin)`; any number of leading batch axes, including none.
    kernel: `(kh, kw, Cin, Cout)`.
    bias: `(Cout,)` or None.
    strides: `(sh, sw)`; stride 1 uses `conv2d`, larger strides XLA's convolution.
    padding: `'SAME'`, `'VALID'` or `((top, bottom), (left, right))`.
    dtype: computation dtype (None: promoted from the inputs and parameters, as in Flax).

  Returns:
    `(..., H', W', Cout)`.
  """
  inputs, kernel, bias = nn.dtypes.promote_dtype(inputs, kernel, bias, dtype=dtype)
  batch_shape = inputs.shape[:-3]
  flat = inputs.reshape(-1, *inputs.shape[-3:])
  if tuple(strides) == (1, 1):
    y = conv2d(flat, kernel, padding)
  else:  # strided convs (ResNet downsampling) keep XLA's convolution and native VJP
    padding = padding if isinstance(padding, str) else _padding_pairs(padding, kernel.shape[:2])
    y = lax.conv_general_dilated(flat, kernel, tuple(strides), padding,
                                 dimension_numbers=_DIMENSION_NUMBERS)
  y = y.reshape(*batch_shape, *y.shape[1:])
  return y if bias is None else y + bias
