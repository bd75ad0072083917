"""Argument checks shared by the pure functions and the modules.

Each check runs on static information (shapes, dtypes, Python values), so it costs
nothing under `jit` and fires at trace time, before XLA can fail somewhere deep. Every
message names the argument, says what it got and what it needs. A value that is traced
under `jit` (an argument of the jitted function, not a Python or NumPy constant) has no
value at trace time: only its shape and dtype are checked then. Shapes are broadcast with
`jnp.broadcast_shapes`, which also takes `jax.export`'s symbolic dimensions (a symbolic
batch size).
"""

import math
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np


def _describe(value) -> str:
  text = repr(value)
  return text if len(text) <= 60 else f"{type(value).__name__} {text[:50]}..."


def array(x, name: str):
  """Returns `x` as an array (arrays pass unchanged), or raises a TypeError naming it."""
  if hasattr(x, "shape") and hasattr(x, "dtype") and not isinstance(x, type):
    return x
  if x is None or isinstance(x, (str, bytes, dict, set)) or callable(x):
    raise TypeError(f"{name} must be an array, got {type(x).__name__} {_describe(x)}")
  try:
    return jnp.asarray(x)
  except (TypeError, ValueError) as error:
    raise TypeError(f"{name} must be an array, got {type(x).__name__} that is not one "
                    f"({error})") from None


def float_array(x, name: str, min_rank: int = 0):
  """Returns `x` as an array after checking it is real floating point of rank >= `min_rank`."""
  x = array(x, name)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    raise TypeError(
        f"{name} must be a real floating-point array (float16, bfloat16, float32, "
        f"float64), got dtype {x.dtype}")
  if x.ndim < min_rank:
    raise ValueError(
        f"{name} must have rank >= {min_rank}, got shape {tuple(x.shape)}")
  return x


def nonempty_axis(x, name: str, axis: int, what: str):
  """Returns `x` after checking that its axis `axis` (the `what` axis) is not empty."""
  if x.shape[axis] == 0:
    raise ValueError(f"{name} must have at least one entry along its {what} axis "
                     f"(axis {axis}), got shape {tuple(x.shape)}")
  return x


def bool_array(mask, name: str, shape: Sequence[int]):
  """Returns `mask` as a bool array after checking it broadcasts to `shape`."""
  mask = array(mask, name)
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


def _is_int(value) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def int_pair(value, name: str, minimum: int = 1) -> tuple[int, int]:
  """Returns `value` as a pair of Python ints >= `minimum`; an int means (value, value)."""
  if _is_int(value):
    value = (value, value)
  if isinstance(value, np.ndarray):
    value = value.tolist()
    value = tuple(value) if isinstance(value, list) else value
  if (not isinstance(value, Sequence) or isinstance(value, (str, bytes)) or len(value) != 2
      or not all(_is_int(v) for v in value)):
    raise TypeError(f"{name} must be an int or a pair of ints, got {_describe(value)}")
  if min(value) < minimum:
    raise ValueError(f"{name} must be >= {minimum} in both axes, got {tuple(value)}")
  return int(value[0]), int(value[1])


def integer(value, name: str, *, minimum: int = 1, odd: bool = False) -> int:
  """Returns `value` as a Python int after checking it is an int >= `minimum` (odd if asked)."""
  need = {1: "a positive", 0: "a non-negative"}.get(minimum, f"an int >= {minimum}:")
  need = f"{need}{' odd' if odd else ''} int"
  if not _is_int(value):
    raise TypeError(f"{name} must be {need}, got {type(value).__name__} {_describe(value)}")
  if value < minimum or (odd and value % 2 == 0):
    raise ValueError(f"{name} must be {need}, got {value}")
  return int(value)


def path(value, name: str, *, empty: bool = False):
  """Returns `value` after checking it is a path (a str or an `os.PathLike`), non-empty
  unless `empty`."""
  if not isinstance(value, (str, os.PathLike)) or not (empty or str(value)):
    raise TypeError(f"{name} must be a {'' if empty else 'non-empty '}path (str or "
                    f"os.PathLike), got {type(value).__name__} {_describe(value)}")
  return value


def positive_ints(values, name: str) -> tuple[int, ...]:
  """Returns `values` as a tuple of Python ints after checking each is an int >= 1."""
  if not isinstance(values, Sequence) or isinstance(values, (str, bytes)):
    raise TypeError(f"{name} must be a sequence of positive ints, got "
                    f"{type(values).__name__} {_describe(values)}")
  for value in values:
    if not _is_int(value) or value < 1:
      raise (TypeError if not _is_int(value) else ValueError)(
          f"{name} must be a sequence of positive ints, got {_describe(values)}")
  return tuple(int(v) for v in values)


def real_scalar(value, name: str, *, positive: bool = False, minimum=None, maximum=None):
  """Returns `value` after checking it is a finite real scalar in the asked range.

  Python and NumPy numbers and 0-d arrays are accepted. `positive` means > 0;
  `minimum`/`maximum` are inclusive bounds. A traced value (under `jit`) is checked for
  its shape and dtype only.
  """
  need = "a finite real number" + (" > 0" if positive else "") + (
      f" >= {minimum}" if minimum is not None else "") + (
      f" <= {maximum}" if maximum is not None else "")
  if isinstance(value, (bool, np.bool_)) or value is None or isinstance(value, (str, bytes)):
    raise TypeError(f"{name} must be {need}, got {type(value).__name__} {_describe(value)}")
  if not isinstance(value, (int, float, np.integer, np.floating)):
    if isinstance(value, type) or not (hasattr(value, "shape") and hasattr(value, "dtype")):
      raise TypeError(f"{name} must be {need}, got {type(value).__name__} {_describe(value)}")
    if value.shape != () or not (jnp.issubdtype(value.dtype, jnp.floating)
                                 or jnp.issubdtype(value.dtype, jnp.integer)):
      raise TypeError(f"{name} must be {need} (a scalar), got an array of shape "
                      f"{tuple(value.shape)} and dtype {value.dtype}")
    if isinstance(value, jax.core.Tracer):
      return value
  number = float(value)
  if (not math.isfinite(number) or (positive and not number > 0)
      or (minimum is not None and number < minimum)
      or (maximum is not None and number > maximum)):
    raise ValueError(f"{name} must be {need}, got {number!r}")
  return value


def boolean(value, name: str) -> bool:
  """Returns `value` as a Python bool after checking it is one."""
  if not isinstance(value, (bool, np.bool_)):
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {_describe(value)}")
  return bool(value)


def function(value, name: str, need: str = "a callable"):
  """Returns `value` after checking it is callable; `need` says what kind of callable."""
  if not callable(value):
    raise TypeError(f"{name} must be {need}, got {type(value).__name__} {_describe(value)}")
  return value


def float_dtype(value, name: str, optional: bool = True):
  """Returns `value` after checking it names a floating-point dtype (or is None if `optional`)."""
  if value is None:
    if optional:
      return value
    ok = False  # jnp.dtype(None) would be float64
  elif isinstance(value, (jax.Array, np.ndarray, np.generic)):
    ok = False  # jnp.dtype takes an array or scalar for its dtype, which Flax refuses later
  else:
    try:
      ok = jnp.issubdtype(jnp.dtype(value), jnp.floating)
    except TypeError:
      ok = False
  if not ok:
    raise TypeError(f"{name} must be a floating-point dtype{' or None' if optional else ''} "
                    f"(e.g. jnp.float32, jnp.bfloat16), got {_describe(value)}")
  return value


def choice(value, name: str, options):
  """Returns `value` after checking it is a str among `options`."""
  if not isinstance(value, str):
    raise TypeError(f"{name} must be a str, one of {sorted(options)}, got "
                    f"{type(value).__name__} {_describe(value)}")
  if value not in options:
    raise ValueError(f"{name} must be one of {sorted(options)}, got {value!r}")
  return value


def dtypes(owner: str, dtype, param_dtype) -> None:
  """Checks a module's `dtype` (floating or None) and `param_dtype` (floating)."""
  float_dtype(dtype, f"{owner}: dtype")
  float_dtype(param_dtype, f"{owner}: param_dtype", optional=False)


def called(fn, name: str, *args):
  """`fn(*args)` for a function given by the user as argument `name`; a `ValueError` or
  `TypeError` it raises is raised again naming that argument (the original is chained)."""
  try:
    return fn(*args)
  except (ValueError, TypeError) as error:
    kind = ValueError if isinstance(error, ValueError) else TypeError
    shapes = ", ".join(str(tuple(getattr(a, "shape", ()))) for a in args)
    raise kind(f"{name} failed on arguments of shape {shapes}: "
               f"{type(error).__name__}: {error}") from error
