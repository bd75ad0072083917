"""NNX twins of the classifiers of `regionatt_jax.nn.models`: `AttentionNet`, `SmallCNN`,
`ResNet` (`ResNet18` ... `ResNet152`, blocks `BasicBlock` and `Bottleneck`),
`RegionAttentionClassifier` and `MILClassifier`.

Each takes the input channels `in_features` first, then the Linen twin's attributes, and
returns float32 logits. `train` is the BatchNorm mode: True/False as in Linen, None (the
default) for each BatchNorm's own mode, which `model.train()` / `model.eval()` set (an
`nnx.BatchNorm` starts in training mode).
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx

from regionatt_jax import _checks
from regionatt_jax.nn import functional
from regionatt_jax.nn import models as linen_models
from regionatt_jax.nn.maps import ATTENTION_MAP
from regionatt_jax.nnx.attention import _batch_norm_mode, AttentionPooling, make_attention
from regionatt_jax.nnx.layers import check_like, Conv, sow

Dtype = Any
ConvDef = Callable[..., nnx.Module]


_PAD_3X3 = linen_models._PAD_3X3  # pylint: disable=protected-access


def _stage_attention(kind, kwargs, in_features: int, dtype, param_dtype, rngs):
  """The NNX attention module of one stage (None for none), with the model's dtypes."""
  options = {"dtype": dtype, "param_dtype": param_dtype,
             **linen_models.STAGE_ATTENTION_DEFAULTS.get(kind, {}), **(kwargs or {})}
  try:
    return make_attention(kind, in_features, rngs=rngs, **options)
  except (ValueError, TypeError) as error:  # built here, so say which options made it
    raise type(error)(f"attention={kind!r} with attention_kwargs={kwargs!r} on a stage of "
                      f"width {in_features}: {error}") from error


class AttentionNet(nnx.Module):
  """The seed network; see `regionatt_jax.nn.AttentionNet`. Sows `attention_map` `(B, H, W)`.

  Args:
    in_features: image channels.
    num_classes: number of classes.
    features: widths of the two 3x3 convs.
    conv: conv class (`Conv` or `flax.nnx.Conv`).
    dtype, param_dtype, rngs: as for `nnx.Conv`.
  """

  def __init__(self, in_features: int, num_classes: int, features: Sequence[int] = (64, 128),
               conv: ConvDef = Conv, *, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_models.AttentionNet, locals())
    conv = functools.partial(conv, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    widths = (in_features, *features)
    self.num_convs = len(features)
    for i, (width_in, width_out) in enumerate(zip(widths, widths[1:])):
      setattr(self, f"conv_{i}", conv(width_in, width_out, (3, 3), padding="SAME"))
    self.attention = conv(widths[-1], 1, (1, 1))
    self.norm = nnx.BatchNorm(widths[-1], momentum=0.9, dtype=dtype, param_dtype=param_dtype,
                              rngs=rngs)
    self.classifier = nnx.Linear(widths[-1], num_classes, dtype=dtype,
                                 param_dtype=param_dtype, rngs=rngs)

  def __call__(self, x, train: bool | None = None):
    """Args: x: `(..., H, W, C)`; train: BatchNorm mode. Returns float32 `(..., classes)`."""
    x = linen_models._image(x, "AttentionNet", min_rank=3)  # pylint: disable=protected-access
    logits, attention = functional.attention_net(
        x, [getattr(self, f"conv_{i}") for i in range(self.num_convs)], self.attention,
        lambda y: self.norm(y, use_running_average=_batch_norm_mode(train)),
        self.classifier)
    sow(self, ATTENTION_MAP, attention)
    return logits


class SmallCNN(nnx.Module):
  """Stages of convolutions with BatchNorm and attention, 2x2 max pool between stages;
  see `regionatt_jax.nn.SmallCNN` (`placement="path"`: conv 3x3 -> BatchNorm -> ReLU ->
  attention; `"residual"`: a `BasicBlock` with the attention on its branch).

  Args:
    in_features: image channels.
    features: width of each stage.
    attention: per-stage attention name for `make_attention`, or None.
    attention_kwargs: options for it.
    placement: `"path"` or `"residual"`.
    batch_norm: BatchNorm after each conv (`placement="residual"` needs it).
    conv: conv class.
    dtype, param_dtype, rngs: as for `nnx.Conv`.
  """

  def __init__(self, in_features: int, features: Sequence[int] = (32, 64, 128),
               attention: str | None = None, attention_kwargs: Mapping[str, Any] | None = None,
               placement: str = "path", batch_norm: bool = True, conv: ConvDef = Conv, *,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_models.SmallCNN, locals())
    self.num_stages, self.placement, self.batch_norm = len(features), placement, batch_norm
    self.out_features = features[-1]
    stage_attention = functools.partial(_stage_attention, attention, attention_kwargs,
                                        dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    conv = functools.partial(conv, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    norm = functools.partial(nnx.BatchNorm, momentum=0.9, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)
    widths = (in_features, *features)
    for i, (width_in, width) in enumerate(zip(widths, widths[1:])):
      if placement == "residual":
        setattr(self, f"block_{i}", BasicBlock(width_in, width, 1, stage_attention(width),
                                               conv, norm, zero_init_last=False))
        continue
      setattr(self, f"conv_{i}", conv(width_in, width, (3, 3), padding="SAME",
                                      use_bias=not batch_norm))
      if batch_norm:
        setattr(self, f"bn_{i}", norm(width))
      setattr(self, f"attention_{i}", stage_attention(width))

  def _stage(self, i: int, train: bool | None):
    """Stage `i` as a function of its input."""
    if self.placement == "residual":
      return functools.partial(getattr(self, f"block_{i}"), train=train)
    norm = getattr(self, f"bn_{i}") if self.batch_norm else None
    attention = getattr(self, f"attention_{i}")
    return functools.partial(
        functional.conv_stage, conv=getattr(self, f"conv_{i}"),
        norm=None if norm is None else functools.partial(
            norm, use_running_average=_batch_norm_mode(train)),
        attention=None if attention is None else functools.partial(attention, train=train))

  def __call__(self, x, train: bool | None = None):
    """Args: x: `(..., H, W, C)`; train: BatchNorm mode. Returns the last feature map."""
    return functional.small_cnn(x, [self._stage(i, train) for i in range(self.num_stages)])


class _Block(nnx.Module):
  """What the residual blocks share; see `regionatt_jax.nn.models._Block`.

  Subclasses build their branch, then call `_shortcut`; the stage attention is the
  block's submodule `attention`, as in Linen. `zero_init_last`: the branch's last
  BatchNorm scale starts at 0 (the default) or 1, as in Linen.
  """
  expansion: ClassVar[int] = 1

  def _shortcut(self, in_features: int, planes: int, strides: int, attention, conv, norm):
    out_features = planes * self.expansion
    self.attention = attention
    projects = strides != 1 or in_features != out_features
    self.downsample_0 = (conv(in_features, out_features, (1, 1), (strides, strides),
                              padding="VALID", use_bias=False) if projects else None)
    self.downsample_1 = norm(out_features) if projects else None

  def _residual_sum(self, x, branch, train: bool | None):
    mode = _batch_norm_mode(train)
    downsample = (None if self.downsample_0 is None else
                  lambda r: self.downsample_1(self.downsample_0(r), use_running_average=mode))
    attention = (None if self.attention is None else
                 lambda y: self.attention(y, train))
    return functional.residual_sum(x, branch, attention, downsample)


class BasicBlock(_Block):
  """torchvision's `BasicBlock`; see `regionatt_jax.nn.models.BasicBlock`."""
  expansion: ClassVar[int] = 1

  def __init__(self, in_features: int, planes: int, strides: int, attention, conv: ConvDef,
               norm: Callable[..., nnx.BatchNorm], zero_init_last: bool = True):
    self.conv1 = conv(in_features, planes, (3, 3), (strides, strides), padding=_PAD_3X3,
                      use_bias=False)
    self.bn1 = norm(planes)
    self.conv2 = conv(planes, planes, (3, 3), padding=_PAD_3X3, use_bias=False)
    self.bn2 = norm(planes, **linen_models.last_norm_kwargs(zero_init_last))
    self._shortcut(in_features, planes, strides, attention, conv, norm)

  def __call__(self, x, train: bool | None = None):
    mode = _batch_norm_mode(train)
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=mode))
    y = self.bn2(self.conv2(y), use_running_average=mode)
    return self._residual_sum(x, y, train)


class Bottleneck(_Block):
  """torchvision's `Bottleneck` (v1.5); see `regionatt_jax.nn.models.Bottleneck`."""
  expansion: ClassVar[int] = 4

  def __init__(self, in_features: int, planes: int, strides: int, attention, conv: ConvDef,
               norm: Callable[..., nnx.BatchNorm], zero_init_last: bool = True):
    self.conv1 = conv(in_features, planes, (1, 1), use_bias=False)
    self.bn1 = norm(planes)
    self.conv2 = conv(planes, planes, (3, 3), (strides, strides), padding=_PAD_3X3,
                      use_bias=False)
    self.bn2 = norm(planes)
    self.conv3 = conv(planes, planes * self.expansion, (1, 1), use_bias=False)
    self.bn3 = norm(planes * self.expansion, **linen_models.last_norm_kwargs(zero_init_last))
    self._shortcut(in_features, planes, strides, attention, conv, norm)

  def __call__(self, x, train: bool | None = None):
    mode = _batch_norm_mode(train)
    y = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=mode))
    y = jax.nn.relu(self.bn2(self.conv2(y), use_running_average=mode))
    y = self.bn3(self.conv3(y), use_running_average=mode)
    return self._residual_sum(x, y, train)


class ResNet(nnx.Module):
  """ResNet laid out as torchvision's; see `regionatt_jax.nn.ResNet` (same names).

  Args:
    in_features: image channels.
    stage_sizes: blocks per stage.
    block: `BasicBlock` or `Bottleneck`.
    width: `planes` of the first stage (doubled per stage).
    stem: `"imagenet"` or `"small"`.
    attention: per-block attention name for `make_attention`, or None.
    attention_kwargs: options for it.
    conv: conv class.
    dtype, param_dtype, rngs: as for `nnx.Conv`.
  """

  def __init__(self, in_features: int, stage_sizes: Sequence[int] = (2, 2, 2, 2),
               block: type[_Block] = BasicBlock, width: int = 64, stem: str = "small",
               attention: str | None = None, attention_kwargs: Mapping[str, Any] | None = None,
               conv: ConvDef = Conv, *, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_models.ResNet, locals())
    self.stem = stem
    conv = functools.partial(conv, dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    norm = functools.partial(nnx.BatchNorm, momentum=0.9, epsilon=1e-5, dtype=dtype,
                             param_dtype=param_dtype, rngs=rngs)
    if stem == "imagenet":
      self.conv1 = conv(in_features, width, (7, 7), (2, 2), padding=((3, 3), (3, 3)),
                        use_bias=False)
    else:
      self.conv1 = conv(in_features, width, (3, 3), padding=_PAD_3X3, use_bias=False)
    self.bn1 = norm(width)
    channels, names = width, []
    for stage, blocks in enumerate(stage_sizes):
      for index in range(blocks):
        planes = width * 2**stage
        names.append(f"layer{stage + 1}_{index}")
        setattr(self, names[-1], block(
            channels, planes, 2 if stage > 0 and index == 0 else 1,
            _stage_attention(attention, attention_kwargs, planes * block.expansion, dtype,
                             param_dtype, rngs), conv, norm))
        channels = planes * block.expansion
    self.block_names, self.out_features = tuple(names), channels

  def __call__(self, x, train: bool | None = None):
    """Args: x: `(..., H, W, C)`; train: BatchNorm mode. Returns the last feature map."""
    x = jax.nn.relu(self.bn1(self.conv1(x), use_running_average=_batch_norm_mode(train)))
    if self.stem == "imagenet":
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    for name in self.block_names:
      x = getattr(self, name)(x, train)
    return x


def _twin_resnet(preset: functools.partial) -> functools.partial:
  """The NNX twin of a Linen ResNet preset (`functools.partial(ResNet, ...)`)."""
  blocks = {linen_models.BasicBlock: BasicBlock, linen_models.Bottleneck: Bottleneck}
  keywords = dict(preset.keywords)
  if "block" in keywords:
    keywords["block"] = blocks[keywords["block"]]
  return functools.partial(ResNet, **keywords)


ResNet18, ResNet34, ResNet50, ResNet101, ResNet152 = (_twin_resnet(preset) for preset in (
    linen_models.ResNet18, linen_models.ResNet34, linen_models.ResNet50,
    linen_models.ResNet101, linen_models.ResNet152))

#: Backbones by name: the twins of `regionatt_jax.nn.BACKBONES`.
BACKBONES: Mapping[str, Callable[..., nnx.Module]] = {
    name: SmallCNN if backbone is linen_models.SmallCNN else _twin_resnet(backbone)
    for name, backbone in linen_models.BACKBONES.items()}


class RegionAttentionClassifier(nnx.Module):
  """Backbone -> region-attention head -> global mean -> Linear; see the Linen twin.

  The head is the submodule `head` and sows its maps there.

  Args:
    in_features: image channels.
    num_classes: number of classes.
    backbone: `"small_cnn"`, `"resnet18"`, `"resnet34"`.
    backbone_kwargs: options of the backbone.
    attention: per-stage attention name, or None.
    attention_kwargs: options of the per-stage attention.
    head: `"region"`, `"multiscale"` or None.
    head_kwargs: options of the head (e.g. `grid=(4, 4)`, `scorer="gated"`).
    conv: conv class of the backbone.
    dtype, param_dtype, rngs: as for `nnx.Linear`.
  """

  def __init__(self, in_features: int, num_classes: int, backbone: str = "small_cnn",
               backbone_kwargs: Mapping[str, Any] | None = None, attention: str | None = None,
               attention_kwargs: Mapping[str, Any] | None = None, head: str | None = "region",
               head_kwargs: Mapping[str, Any] | None = None, conv: ConvDef = Conv, *,
               dtype: Dtype | None = None, param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_models.RegionAttentionClassifier, locals())
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.backbone = BACKBONES[backbone](in_features, attention=attention,
                                        attention_kwargs=attention_kwargs, conv=conv, **kw,
                                        **(backbone_kwargs or {}))
    width = self.backbone.out_features
    self.head = make_attention(head, width, **kw, **{**linen_models.HEAD_DEFAULTS.get(head, {}),
                                                     **(head_kwargs or {})})
    self.classifier = nnx.Linear(width, num_classes, **kw)

  def __call__(self, x, train: bool | None = None):
    """Args: x: `(B, H, W, C)`; train: BatchNorm mode. Returns float32 `(B, classes)`."""
    x = linen_models._image(x, "RegionAttentionClassifier", min_rank=3)  # pylint: disable=protected-access
    features = self.backbone(x, train)
    if self.head is not None:
      features = self.head(features, train)
    return self.classifier(functional.global_mean(features)).astype(jnp.float32)


class MILClassifier(nnx.Module):
  """Instance CNN -> embedding -> `AttentionPooling` -> Linear; see the Linen twin.

  Args:
    in_features: channels of the instance images.
    num_classes: number of bag classes.
    features: widths of the instance CNN (no BatchNorm).
    embed_dim: instance embedding width.
    pooling: `"attention"`, `"gated"`, `"mean"` or `"max"`.
    level: `"embedding"` or `"instance"` (mi-Net; see the Linen twin).
    hidden: width of the attention score.
    conv: conv class.
    dtype, param_dtype, rngs: as for `nnx.Linear`.
  """

  def __init__(self, in_features: int, num_classes: int, features: Sequence[int] = (16, 32, 64),
               embed_dim: int = 64, pooling: str = "attention", level: str = "embedding",
               hidden: int = 64, conv: ConvDef = Conv, *, dtype: Dtype | None = None,
               param_dtype: Dtype = jnp.float32, rngs: nnx.Rngs):
    check_like(linen_models.MILClassifier, locals())
    kw = dict(dtype=dtype, param_dtype=param_dtype, rngs=rngs)
    self.level = level
    self.instance_cnn = SmallCNN(in_features, features, batch_norm=False, conv=conv, **kw)
    self.embed = nnx.Linear(features[-1], embed_dim, **kw)
    self.pooling = AttentionPooling(embed_dim, pooling, hidden, **kw)
    self.classifier = nnx.Linear(embed_dim, num_classes, **kw)

  def __call__(self, x, train: bool | None = None, mask=None):
    """Args: x: `(B, N, h, w, C)` bags; train: unused; mask: optional `(B, N)` bool.

    Returns float32 `(B, classes)`.
    """
    x = linen_models._image(x, "MILClassifier", min_rank=4)  # pylint: disable=protected-access
    h = self.instance_cnn(x, train)
    h = jax.nn.relu(self.embed(functional.global_mean(h)))
    if self.level == "instance":
      return functional.mi_net(self.classifier(h), lambda p: self.pooling(p, mask))
    return self.classifier(self.pooling(h, mask)).astype(jnp.float32)
