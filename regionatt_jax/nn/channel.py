"""Channel and spatial attention: SE, ECA, spatial attention, CBAM, coordinate attention.

Each module maps a feature map `(..., H, W, C)` to a re-weighted feature map of the same
shape and follows its paper's definition (reduction ratios, kernel sizes, biases), so its
parameter count equals the published formula:

| module | paper | parameters |
|---|---|---|
| `SqueezeExcite` | Hu et al., 2018 | `2 C²/r + C/r + C` (two Dense layers with biases) |
| `EfficientChannelAttention` | Wang et al., 2020 | `k`, `k = odd(|log2(C)/γ + b/γ|)`, γ=2, b=1 |
| `SpatialAttention` | Woo et al., 2018 (CBAM) | `2 k²` (k×k conv 2->1, no bias) |
| `CBAM` | Woo et al., 2018 | `2 C²/r + C/r + C + 2 k²` |
| `CoordinateAttention` | Hou et al., 2021 | `3 C m + 3 m + 2 C`, `m = max(8, C // r)` |

All share the call signature `module(x, train=False)` so a backbone can plug any of them in
(`train` only matters for `CoordinateAttention`, which has a BatchNorm). Pooled statistics
are computed in float32 and cast back to the compute dtype.
"""

import math
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from regionatt_jax import _checks
from regionatt_jax.nn import functional
from regionatt_jax.nn.checked import CheckedModule
from regionatt_jax.nn.maps import ATTENTION_MAP

Dtype = Any


def _feature_map(x, module: str):
  return _checks.float_array(x, f"{module}: x (feature map `(..., H, W, C)`)", min_rank=3)


def _compute_dtype(x, dtype: Dtype | None):
  return dtype if dtype is not None else x.dtype


def _divisible_hidden(channels: int, reduction: int, module: str) -> int:
  if channels % reduction:
    raise ValueError(
        f"{module}: channels (last axis of x) must be divisible by reduction, "
        f"got channels={channels}, reduction={reduction}")
  return channels // reduction


class _Bottleneck(nn.Module):
  """Dense C -> C/r -> ReLU -> Dense C/r -> C, the excitation MLP of SE and CBAM."""
  hidden: int
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, s):
    dense = lambda features, name: nn.Dense(
        features, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    return functional.bottleneck(s, dense(self.hidden, "reduce"), dense(s.shape[-1], "expand"))


class SqueezeExcite(CheckedModule):
  """Squeeze-and-excitation (Hu et al., 2018): `x * sigmoid(MLP(mean_hw(x)))`.

  Attributes:
    reduction: r, the bottleneck is `C // r` wide; C must be divisible by r.
    dtype: compute dtype (None: the input's).
    param_dtype: parameter dtype.
  """
  reduction: int = 16
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.integer(a.reduction, "SqueezeExcite: reduction")
    _checks.dtypes("SqueezeExcite", a.dtype, a.param_dtype)

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Re-weights channels.

    Args:
      x: `(..., H, W, C)` feature map.
      train: unused; part of the shared attention-module signature.

    Returns:
      `(..., H, W, C)`.
    """
    del train
    x = _feature_map(x, "SqueezeExcite")
    hidden = _divisible_hidden(x.shape[-1], self.reduction, "SqueezeExcite")
    dtype = _compute_dtype(x, self.dtype)
    return functional.squeeze_excite(
        x, _Bottleneck(hidden, dtype, self.param_dtype, name="mlp"), dtype)


def eca_kernel_size(channels: int, gamma: float = 2.0, b: float = 1.0) -> int:
  """The adaptive 1-D kernel size of ECA-Net: the odd number nearest `|log2(C)/γ + b/γ|`.

  Written as in the authors' code: `t = int(|(log2 C + b) / γ|)`, then `t` if odd else `t + 1`.
  """
  _checks.integer(channels, "channels")
  _checks.real_scalar(gamma, "gamma", positive=True)
  _checks.real_scalar(b, "b")
  t = int(abs((math.log2(channels) + b) / gamma))
  return t if t % 2 else t + 1


class EfficientChannelAttention(CheckedModule):
  """ECA (Wang et al., 2020): a 1-D conv across the pooled channels, no bias, sigmoid.

  Attributes:
    kernel_size: odd kernel size k; None picks `eca_kernel_size(C, gamma, b)`.
    gamma: γ of the adaptive kernel size.
    b: b of the adaptive kernel size.
    dtype: compute dtype (None: the input's).
    param_dtype: parameter dtype.
  """
  kernel_size: int | None = None
  gamma: float = 2.0
  b: float = 1.0
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    if a.kernel_size is not None:
      _checks.integer(a.kernel_size, "EfficientChannelAttention: kernel_size", odd=True)
    _checks.real_scalar(a.gamma, "EfficientChannelAttention: gamma", positive=True)
    _checks.real_scalar(a.b, "EfficientChannelAttention: b")
    _checks.dtypes("EfficientChannelAttention", a.dtype, a.param_dtype)

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Re-weights channels.

    Args:
      x: `(..., H, W, C)` feature map.
      train: unused; part of the shared attention-module signature.

    Returns:
      `(..., H, W, C)`.
    """
    del train
    x = _feature_map(x, "EfficientChannelAttention")
    k = self.kernel_size or eca_kernel_size(x.shape[-1], self.gamma, self.b)
    dtype = _compute_dtype(x, self.dtype)
    return functional.efficient_channel_attention(
        x, nn.Conv(1, (k,), padding="SAME", use_bias=False, dtype=dtype,
                   param_dtype=self.param_dtype, name="conv"), dtype)


class SpatialAttention(CheckedModule):
  """CBAM's spatial attention: `x * sigmoid(conv_kxk([mean_c(x), max_c(x)]))`.

  The map `(..., H, W)` is sown as `intermediates/<path>/attention_map`; see
  `regionatt_jax.nn.attention_maps`.

  Attributes:
    kernel_size: k of the k×k conv (7 in the paper).
    dtype: compute dtype (None: the input's).
    param_dtype: parameter dtype.
  """
  kernel_size: int = 7
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.integer(a.kernel_size, "SpatialAttention: kernel_size")
    _checks.dtypes("SpatialAttention", a.dtype, a.param_dtype)

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Re-weights positions.

    Args:
      x: `(..., H, W, C)` feature map.
      train: unused; part of the shared attention-module signature.

    Returns:
      `(..., H, W, C)`.
    """
    del train
    x = _feature_map(x, "SpatialAttention")
    dtype = _compute_dtype(x, self.dtype)
    y, attention = functional.spatial_attention(
        x, nn.Conv(1, (self.kernel_size, self.kernel_size), padding="SAME", use_bias=False,
                   dtype=dtype, param_dtype=self.param_dtype, name="conv"), dtype)
    self.sow("intermediates", ATTENTION_MAP, attention)
    return y


class CBAM(CheckedModule):
  """Convolutional block attention module (Woo et al., 2018): channel, then spatial.

  Channel gate: `sigmoid(MLP(mean_hw x) + MLP(max_hw x))` with one shared MLP
  `C -> C/r -> C`; then `SpatialAttention(kernel_size)`.

  Attributes:
    reduction: r; C must be divisible by r.
    kernel_size: k of the spatial attention conv.
    dtype: compute dtype (None: the input's).
    param_dtype: parameter dtype.
  """
  reduction: int = 16
  kernel_size: int = 7
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.integer(a.reduction, "CBAM: reduction")
    _checks.integer(a.kernel_size, "CBAM: kernel_size")
    _checks.dtypes("CBAM", a.dtype, a.param_dtype)

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Re-weights channels, then positions.

    Args:
      x: `(..., H, W, C)` feature map.
      train: unused; part of the shared attention-module signature.

    Returns:
      `(..., H, W, C)`.
    """
    x = _feature_map(x, "CBAM")
    hidden = _divisible_hidden(x.shape[-1], self.reduction, "CBAM")
    dtype = _compute_dtype(x, self.dtype)
    x = functional.cbam_channel_gate(
        x, _Bottleneck(hidden, dtype, self.param_dtype, name="mlp"), dtype)
    return SpatialAttention(self.kernel_size, dtype, self.param_dtype, name="spatial")(x, train)


class CoordinateAttention(CheckedModule):
  """Coordinate attention (Hou et al., 2021).

  Pools along W and along H, runs both strips through one shared 1x1 conv `C -> m`
  (`m = max(min_hidden, C // r)`) + BatchNorm + h-swish, then a 1x1 conv `m -> C` per
  direction and a sigmoid: `y = x * a_h[..., :, None, :] * a_w[..., None, :, :]`.

  Attributes:
    reduction: r (32 in the paper).
    min_hidden: lower bound on m (8 in the paper).
    momentum: BatchNorm momentum.
    dtype: compute dtype (None: the input's).
    param_dtype: parameter dtype.
  """
  reduction: int = 32
  min_hidden: int = 8
  momentum: float = 0.9
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.integer(a.reduction, "CoordinateAttention: reduction")
    _checks.integer(a.min_hidden, "CoordinateAttention: min_hidden")
    _checks.real_scalar(a.momentum, "CoordinateAttention: momentum", minimum=0, maximum=1)
    _checks.dtypes("CoordinateAttention", a.dtype, a.param_dtype)

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Re-weights by row and by column.

    Args:
      x: `(..., H, W, C)` feature map.
      train: BatchNorm uses batch statistics (and updates 'batch_stats') when True.

    Returns:
      `(..., H, W, C)`.
    """
    x = _feature_map(x, "CoordinateAttention")
    channels = x.shape[-1]
    hidden = max(self.min_hidden, channels // self.reduction)
    dtype = _compute_dtype(x, self.dtype)
    dense = lambda features, name: nn.Dense(  # a 1x1 conv
        features, dtype=dtype, param_dtype=self.param_dtype, name=name)
    norm = nn.BatchNorm(use_running_average=not train, momentum=self.momentum, dtype=dtype,
                        param_dtype=self.param_dtype, name="bn")
    return functional.coordinate_attention(
        x, dense(hidden, "conv_shared"), norm, dense(channels, "conv_h"),
        dense(channels, "conv_w"), dtype)
