"""Argument checks shared by the pure functions.

Each check runs on static information (shapes, dtypes, Python values), so it costs
nothing under `jit` and fires at trace time, before XLA can fail somewhere deep. Shapes
are broadcast with `jnp.broadcast_shapes`, which also takes `jax.export`'s symbolic
dimensions (a symbolic batch size).
"""

from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np


def float_array(x, name: str, min_rank: int = 0):
  """Returns `x` as an array after checking it is real floating point of rank >= `min_rank`."""
  if not hasattr(x, "shape") or not hasattr(x, "dtype"):
    x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"{name} must be a real floating-point array (float16, bfloat16, float32, "
        f"float64), got dtype {x.dtype}")
  if x.ndim < min_rank:
    raise ValueError(
        f"{name} must have rank >= {min_rank}, got shape {tuple(x.shape)}")
  return x


def bool_array(mask, name: str, shape: Sequence[int]):
  """Returns `mask` as a bool array after checking it broadcasts to `shape`."""
  mask = jnp.asarray(mask)
  if mask.dtype != jnp.bool_:
    raise TypeError(f"{name} must be a boolean array, got dtype {mask.dtype}")
  try:
    broadcast = jnp.broadcast_shapes(tuple(mask.shape), tuple(shape))
  except ValueError:
    broadcast = None
  if broadcast != tuple(shape):
    raise ValueError(
        f"{name} must have a shape that broadcasts to {tuple(shape)}, "
        f"got {tuple(mask.shape)}")
  return mask


def broadcastable(shape_a, shape_b, names: str) -> tuple[int, ...]:
  """Returns the broadcast of two shapes, or raises a ValueError naming both."""
  try:
    return jnp.broadcast_shapes(tuple(shape_a), tuple(shape_b))
  except ValueError:
    raise ValueError(
        f"{names} must have leading axes that broadcast together, got "
        f"{tuple(shape_a)} and {tuple(shape_b)}") from None


def int_pair(value, name: str, minimum: int = 1) -> tuple[int, int]:
  """Returns `value` as a pair of Python ints >= `minimum`; an int means (value, value)."""
  if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
    value = (value, value)
  if isinstance(value, np.ndarray):
    value = tuple(value.tolist())
  if (not isinstance(value, Sequence) or len(value) != 2
      or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                 for v in value)):
    raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
  if min(value) < minimum:
    raise ValueError(f"{name} must be >= {minimum} in both axes, got {tuple(value)}")
  return int(value[0]), int(value[1])


def choice(value: str, name: str, options) -> str:
  if value not in options:
    raise ValueError(f"{name} must be one of {sorted(options)}, got {value!r}")
  return value
