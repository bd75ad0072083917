"""NNX building blocks shared by the NNX modules: the custom-VJP `Conv`, a Flax recurrent
cell holding its parameters as `nnx.Param`s, sowing that only records inside
`nnx.capture`, and `check_like`, which runs a Linen twin's attribute checks."""

import types
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from regionatt_jax import _checks
from regionatt_jax.nn import conv as conv_lib
from regionatt_jax.nn import functional

Dtype = Any


def check_like(linen_class, arguments: Mapping[str, Any], *,
               optional_width: bool = False) -> None:
  """Checks an NNX constructor's `arguments` (its `locals()`) with the construction-time
  checks of its Linen twin `linen_class`, whose attributes have the same names, and its
  input width `in_features` (which Linen infers): a positive int, or None where
  `optional_width`."""
  if not (optional_width and arguments["in_features"] is None):
    _checks.integer(arguments["in_features"], f"{linen_class.__name__}: in_features")
  linen_class._check_attributes(types.SimpleNamespace(**arguments))  # pylint: disable=protected-access


def sow(module: nnx.Module, name: str, value) -> None:
  """Sows `value` as the `nnx.Intermediate` `name`, only while `nnx.capture` records.

  As Linen's `sow` is a no-op unless 'intermediates' is mutable, a plain call (a train
  step) leaves the module unchanged: sowing outside `nnx.capture` would store a growing
  tuple on the module, changing its graph and retracing `nnx.jit` at every step.
  `nnx.capture` marks the modules it records with `__captures__`, which is also how
  `nnx.Module.sow` tells the two cases apart.
  """
  if hasattr(module, "__captures__"):
    module.sow(nnx.Intermediate, name, value)


class Conv(nnx.Module):
  """NNX twin of `regionatt_jax.nn.conv.Conv`: `flax.nnx.Conv`'s parameters, the same
  values, and the fast XLA:CPU weight gradient of `regionatt_jax.nn.conv.conv2d`.

  Args:
    in_features: input channels `Cin`.
    out_features: output channels `Cout`.
    kernel_size: `(kh, kw)`, or one int for a square kernel.
    strides: an int or `(sh, sw)`.
    padding: `'SAME'`, `'VALID'` or `((top, bottom), (left, right))`.
    use_bias: add a `(Cout,)` bias.
    dtype: computation dtype (None: promoted from inputs and parameters).
    param_dtype: dtype of the parameters.
    kernel_init: initializer of the `(kh, kw, Cin, Cout)` kernel.
    bias_init: initializer of the bias.
    rngs: `nnx.Rngs` with a `params` stream.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int | Sequence[int],
               strides: int | Sequence[int] = 1, padding: conv_lib.Padding = "SAME",
               use_bias: bool = True, *, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32,
               kernel_init=nn.linear.default_kernel_init,
               bias_init=nn.initializers.zeros_init(), rngs: nnx.Rngs):
    kernel_hw, self.strides = conv_lib.conv_geometry(kernel_size, strides)
    self.padding = padding if isinstance(padding, str) else tuple(map(tuple, padding))
    self.dtype = dtype
    self.kernel = nnx.Param(kernel_init(rngs.params(), (*kernel_hw, in_features, out_features),
                                        param_dtype))
    self.bias = (nnx.Param(bias_init(rngs.params(), (out_features,), param_dtype))
                 if use_bias else None)

  def __call__(self, inputs: jax.Array) -> jax.Array:
    """Args: inputs: `(..., H, W, Cin)`. Returns `(..., H', W', Cout)`."""
    if inputs.ndim < 3:
      raise ValueError(f"inputs must be (..., H, W, Cin), got shape {inputs.shape}")
    bias = None if self.bias is None else self.bias[...]
    return conv_lib.conv(inputs, self.kernel[...], bias, self.strides, self.padding, self.dtype)


class ParamTree(nnx.Module):
  """A nested mapping of arrays held as `nnx.Param`s under the same names."""

  def __init__(self, tree: Mapping[str, Any]):
    self.names = tuple(tree)
    for name, value in tree.items():
      setattr(self, name, ParamTree(value) if isinstance(value, Mapping) else nnx.Param(value))

  def tree(self) -> dict[str, Any]:
    """The arrays as a nested dict."""
    return {name: (value.tree() if isinstance(value, ParamTree) else value[...])
            for name in self.names for value in (getattr(self, name),)}


def _orthogonal_in_float32(key, shape, dtype=jnp.float32):
  """The cells' default orthogonal init, drawn in float32: its QR has no bfloat16 kernel."""
  return nn.initializers.orthogonal()(key, shape, jnp.float32).astype(dtype)


#: The Flax cells by name.
CELLS = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}


def linen_cell(cell: str, hidden: int, dtype: Dtype | None, param_dtype: Dtype) -> nn.Module:
  """The Flax cell `cell` ("gru"/"lstm") of `hidden` units, orthogonal recurrent kernels."""
  return CELLS[cell](hidden, dtype=dtype, param_dtype=param_dtype,
                     recurrent_kernel_init=_orthogonal_in_float32)


class RecurrentCell(ParamTree):
  """A `flax.linen.GRUCell`/`LSTMCell` whose parameters are this module's `nnx.Param`s.

  The cell's equations are Flax's own, applied as a pure function of the parameters
  (`cell.apply`), so they match the Linen `nn.RNN` scan exactly and the parameter names
  (`ir`, `hz`, ...) are the Linen cell's.

  Args:
    cell: `"gru"` or `"lstm"`.
    in_features: input width.
    hidden: hidden size.
    dtype: compute dtype.
    param_dtype: parameter dtype.
    rngs: `nnx.Rngs` with a `params` stream.
  """

  def __init__(self, cell: str, in_features: int, hidden: int, *, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    self.cell, self.hidden = cell, hidden
    self.dtype, self.param_dtype = dtype, param_dtype
    module = linen_cell(cell, hidden, dtype, param_dtype)
    inputs = jnp.zeros((1, in_features), param_dtype)
    carry = module.initialize_carry(jax.random.key(0), inputs.shape)
    super().__init__(module.init(rngs.params(), carry, inputs)["params"])

  def scan(self, sequence, reverse: bool = False):
    """Runs the cell over `(B, T, D)` from a zero carry; returns the `(B, T, hidden)` outputs."""
    module = linen_cell(self.cell, self.hidden, self.dtype, self.param_dtype)
    variables = {"params": self.tree()}
    carry = module.initialize_carry(jax.random.key(0), sequence[:, 0].shape)
    return functional.recurrent_states(
        sequence, lambda c, x: module.apply(variables, c, x), carry, reverse=reverse)
