"""Classifiers: `AttentionNet` (the seed network), `RegionAttentionClassifier` (a small CNN
or torchvision-layout ResNet backbone, attention per block, region-attention head) and
`MILClassifier` (instance CNN + attention pooling), and `build_model`, which turns a
config's `model` section into one of them.

All take channels-last input and return logits `(..., num_classes)`; call them as
`model.apply(variables, x, train=...)` (with `mutable=["batch_stats"]` when training a
model with BatchNorm). Those with an attention map sow it (see
`regionatt_jax.nn.maps.attention_maps`). The conv layer class is one attribute,
`conv`, by default `regionatt_jax.nn.conv.Conv`: `flax.linen.Conv`'s parameters and
values with a weight gradient ~2x faster on XLA:CPU (`conv=flax.linen.Conv` also works).
"""

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import jax.numpy as jnp

from regionatt_jax import _checks
from regionatt_jax.nn import functional
from regionatt_jax.nn.checked import CheckedModule
from regionatt_jax.nn.conv import Conv
from regionatt_jax.nn.factory import check_fields, check_kind, make_attention
from regionatt_jax.nn.maps import ATTENTION_MAP
from regionatt_jax.nn.pooling import AttentionPooling
from regionatt_jax.nn.pooling import KINDS as POOLINGS

Dtype = Any
ModuleDef = Any

#: Options that make "region"/"multiscale" keep the feature-map shape inside a stage.
STAGE_ATTENTION_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "region": {"grid": (2, 2), "normalize": "sigmoid", "aggregate": "reassemble"},
    "multiscale": {"mode": "parallel"},
}

#: Default options of the classifier head.
HEAD_DEFAULTS: Mapping[str, Mapping[str, Any]] = {
    "region": {"grid": (4, 4)},
    "multiscale": {"grids": ((1, 1), (2, 2), (4, 4)), "mode": "coarse_to_fine"},
}


def _image(x, module: str, min_rank: int = 4):
  return _checks.float_array(x, f"{module}: x (images `(B, H, W, C)`)", min_rank=min_rank)


def _check_options(owner: str, name: str, options) -> None:
  if options is not None and not isinstance(options, Mapping):
    raise TypeError(f"{owner}: {name} must be a mapping of options or None, got "
                    f"{type(options).__name__} {options!r}")


def _check_stage_attention(owner: str, kind, options) -> None:
  """Checks the `attention`/`attention_kwargs` pair of a backbone."""
  check_kind(kind, f"{owner}: attention")
  _check_options(owner, "attention_kwargs", options)


def _stage_attention(kind, kwargs, name: str, dtype, param_dtype):
  """The attention module of one stage (None for none), with the model's dtypes."""
  options = {"dtype": dtype, "param_dtype": param_dtype,
             **STAGE_ATTENTION_DEFAULTS.get(kind, {}), **(kwargs or {})}
  return make_attention(kind, name=name, **options)


class AttentionNet(CheckedModule):
  """The seed network of region attention, fixed so that it runs and learns.

  conv 3x3 C->64, ReLU, conv 3x3 64->128, ReLU; attention map `m = sigmoid(conv1x1
  128->1)`; features * m; global average pool; BatchNorm; Dense -> logits. The map
  `(B, H, W)` is sown as `attention_map`. `docs/attention_net.md` sets it beside the
  network as first printed and says what was changed and why (the BatchNorm on the
  pooled features is what lets it learn).

  Attributes:
    num_classes: number of classes.
    features: widths of the two 3x3 convs (64, 128 in the paper).
    conv: conv class (a drop-in for `flax.linen.Conv`).
    dtype: compute dtype (None: inferred).
    param_dtype: parameter dtype.
  """
  num_classes: int
  features: Sequence[int] = (64, 128)
  conv: ModuleDef = Conv
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.integer(a.num_classes, "AttentionNet: num_classes")
    _checks.positive_ints(a.features, "AttentionNet: features")
    _checks.function(a.conv, "AttentionNet: conv", "a conv module class")
    _checks.dtypes("AttentionNet", a.dtype, a.param_dtype)

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Args: x: `(..., H, W, C)` images; train: BatchNorm mode. Returns float32 `(..., classes)`."""
    x = _image(x, "AttentionNet", min_rank=3)
    conv = functools.partial(self.conv, dtype=self.dtype, param_dtype=self.param_dtype)
    # The BatchNorm on the pooled features is what lets it learn (docs/attention_net.md).
    logits, attention = functional.attention_net(
        x, [conv(width, (3, 3), padding="SAME", name=f"conv_{i}")
            for i, width in enumerate(self.features)],
        conv(1, (1, 1), name="attention"),
        nn.BatchNorm(use_running_average=not train, momentum=0.9, dtype=self.dtype,
                     param_dtype=self.param_dtype, name="norm"),
        nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                 name="classifier"))
    self.sow("intermediates", ATTENTION_MAP, attention)
    return logits


#: Where `SmallCNN` puts its stage attention (see `SmallCNN`).
PLACEMENTS = ("path", "residual")


class SmallCNN(CheckedModule):
  """Stages of convolutions with BatchNorm and attention, 2x2 max pool between stages.

  `placement="path"` (the default): each stage is conv 3x3 -> BatchNorm -> ReLU ->
  attention, so the attention gates the network's only signal path. `"residual"`: each
  stage is a `BasicBlock` (conv-BN-ReLU-conv-BN, attention on that branch before the
  add, identity or 1x1-conv shortcut, ReLU), the placement of SE-ResNet and the CBAM
  paper. Its branches' last BatchNorm scale starts at 1 (torchvision's default), not
  0: there is no stem conv before the blocks, so zero-initialized branches would make
  the initial network 1x1 convolutions and max pools, with no spatial filter (so
  trained on cluttered digits, it stayed at chance for 150 to 1,000 steps). With the
  default (32, 64, 128) a 64x64 input leaves a 16x16x128 feature map.

  Attributes:
    features: width of each stage.
    attention: per-stage attention name for `make_attention`, or None.
    attention_kwargs: options for it (see `STAGE_ATTENTION_DEFAULTS`).
    placement: `"path"` or `"residual"` (`PLACEMENTS`).
    batch_norm: use BatchNorm after each conv (`placement="residual"` needs it).
    conv: conv class.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  features: Sequence[int] = (32, 64, 128)
  attention: str | None = None
  attention_kwargs: Mapping[str, Any] | None = None
  placement: str = "path"
  batch_norm: bool = True
  conv: ModuleDef = Conv
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.positive_ints(a.features, "SmallCNN: features")
    _check_stage_attention("SmallCNN", a.attention, a.attention_kwargs)
    _checks.choice(a.placement, "SmallCNN: placement", PLACEMENTS)
    _checks.boolean(a.batch_norm, "SmallCNN: batch_norm")
    if a.placement == "residual" and not a.batch_norm:
      raise ValueError("SmallCNN: placement='residual' needs batch_norm=True, got False")
    _checks.function(a.conv, "SmallCNN: conv", "a conv module class")
    _checks.dtypes("SmallCNN", a.dtype, a.param_dtype)

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Args: x: `(..., H, W, C)`; train: BatchNorm mode. Returns `(..., H/2^(S-1), W/2^(S-1), F)`."""
    attention = functools.partial(_stage_attention, self.attention, self.attention_kwargs,
                                  dtype=self.dtype, param_dtype=self.param_dtype)
    conv = functools.partial(self.conv, dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             dtype=self.dtype, param_dtype=self.param_dtype)

    def stage(i: int, width: int):
      if self.placement == "residual":
        return functools.partial(
            BasicBlock(width, 1, attention, conv, norm, zero_init_last=False,
                       name=f"block_{i}"), train=train)
      stage_conv = conv(width, (3, 3), padding="SAME", use_bias=not self.batch_norm,
                        name=f"conv_{i}")
      stage_norm = norm(name=f"bn_{i}") if self.batch_norm else None
      stage_attention = attention(f"attention_{i}")
      return functools.partial(
          functional.conv_stage, conv=stage_conv, norm=stage_norm,
          attention=None if stage_attention is None else (
              functools.partial(stage_attention, train=train)))

    return functional.small_cnn(x, [stage(i, width) for i, width in enumerate(self.features)])


# torchvision pads 3x3 convs by 1 on every side; Flax's "SAME" pads a stride-2 conv of
# an even size by (0, 1) and so samples other pixels.
_PAD_3X3 = ((1, 1), (1, 1))


def last_norm_kwargs(zero_init_last: bool) -> dict[str, Any]:
  """BatchNorm kwargs of a residual branch's last norm: a zero scale, or the default."""
  return {"scale_init": nn.initializers.zeros} if zero_init_last else {}


class _Block(nn.Module):
  """What the residual blocks share: the fields, and the end of the block.

  The stage attention sits on the residual branch after its last BatchNorm, before the
  add, as in SE-ResNet and the CBAM paper's ResNet-50 + CBAM. The shortcut is
  torchvision's `downsample` (1x1 conv with the block's stride, BatchNorm) when the
  block changes the shape, else the identity.

  Attributes:
    planes: channels of the block's 3x3 conv; the block outputs `planes * expansion`.
    strides: stride of the block (2 in the first block of stages 2-4).
    attention: builds the attention module from its name (None: no attention).
    conv: conv class with the model's dtypes.
    norm: BatchNorm class with the model's dtypes and mode.
    zero_init_last: the branch's last BatchNorm scale starts at 0, so that the block
      starts as its shortcut (Goyal et al. 2017; torchvision's `zero_init_residual=True`,
      timm's `zero_init_last`); else at 1 (torchvision's default).
  """
  planes: int
  strides: int = 1
  attention: Callable[[str], nn.Module | None] | None = None
  conv: ModuleDef = Conv
  norm: ModuleDef = nn.BatchNorm
  zero_init_last: bool = True
  expansion: ClassVar[int] = 1

  def _last_norm(self, name: str) -> nn.Module:
    """The branch's last BatchNorm (see `zero_init_last`)."""
    return self.norm(name=name, **last_norm_kwargs(self.zero_init_last))

  def _residual_sum(self, x, branch, train: bool):
    """relu(shortcut(x) + attention(branch))."""
    attention = self.attention("attention") if self.attention else None
    downsample = lambda r: self.norm(name="downsample_1")(self.conv(
        branch.shape[-1], (1, 1), (self.strides, self.strides), padding="VALID",
        use_bias=False, name="downsample_0")(r))
    return functional.residual_sum(
        x, branch, None if attention is None else lambda y: attention(y, train), downsample)


class BasicBlock(_Block):
  """torchvision's `BasicBlock`: conv3x3(stride)-BN-ReLU-conv3x3-BN, attention, + shortcut, ReLU."""
  expansion: ClassVar[int] = 1

  @nn.compact
  def __call__(self, x, train: bool):
    """Args: x: `(..., H, W, C)`; train: BatchNorm mode. Returns `(..., H/s, W/s, planes)`."""
    y = self.conv(self.planes, (3, 3), (self.strides, self.strides),
                  padding=_PAD_3X3, use_bias=False, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.planes, (3, 3), padding=_PAD_3X3, use_bias=False,
                  name="conv2")(y)
    y = self._last_norm("bn2")(y)
    return self._residual_sum(x, y, train)


class Bottleneck(_Block):
  """torchvision's `Bottleneck` (ResNet v1.5, stride on the 3x3 conv): conv1x1-BN-ReLU,
  conv3x3(stride)-BN-ReLU, conv1x1 to `4 * planes`-BN, attention, + shortcut, ReLU."""
  expansion: ClassVar[int] = 4

  @nn.compact
  def __call__(self, x, train: bool):
    """Args: x: `(..., H, W, C)`; train: BatchNorm mode. Returns `(..., H/s, W/s, 4 planes)`."""
    y = self.conv(self.planes, (1, 1), use_bias=False, name="conv1")(x)
    y = nn.relu(self.norm(name="bn1")(y))
    y = self.conv(self.planes, (3, 3), (self.strides, self.strides),
                  padding=_PAD_3X3, use_bias=False, name="conv2")(y)
    y = nn.relu(self.norm(name="bn2")(y))
    y = self.conv(self.planes * self.expansion, (1, 1), use_bias=False, name="conv3")(y)
    y = self._last_norm("bn3")(y)
    return self._residual_sum(x, y, train)


STEMS = ("imagenet", "small")


class ResNet(CheckedModule):
  """ResNet laid out as torchvision's, so that its weights load by name (see
  `regionatt_jax.pytorch.from_torchvision`).

  Submodules carry torchvision's names with `_` for `.` before an index: `conv1`, `bn1`,
  `layer1_0` ... `layer4_2` (blocks), inside a block `conv1`, `bn1`, ..., `downsample_0`
  (conv) and `downsample_1` (BatchNorm), and the stage attention `attention`. BatchNorm
  has torchvision's eps 1e-5 and momentum 0.1 (Flax's `momentum=0.9`: the share kept).

  Attributes:
    stage_sizes: blocks per stage ((2, 2, 2, 2) in ResNet-18, (3, 4, 6, 3) in ResNet-34/50).
    block: `BasicBlock` or `Bottleneck`.
    width: `planes` of the first stage (doubled per stage).
    stem: `"imagenet"` (7x7/2 conv + 3x3/2 max pool, torchvision's, needed to load its
      weights) or `"small"` (3x3/1 conv, no pool, for small images such as 32x32 or 64x64).
    attention: per-block attention name for `make_attention`, or None.
    attention_kwargs: options for it.
    conv: conv class.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: ModuleDef = BasicBlock
  width: int = 64
  stem: str = "small"
  attention: str | None = None
  attention_kwargs: Mapping[str, Any] | None = None
  conv: ModuleDef = Conv
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.positive_ints(a.stage_sizes, "ResNet: stage_sizes")
    _checks.integer(a.width, "ResNet: width")
    _checks.choice(a.stem, "ResNet: stem", STEMS)
    _check_stage_attention("ResNet", a.attention, a.attention_kwargs)
    _checks.function(a.conv, "ResNet: conv", "a conv module class")
    _checks.dtypes("ResNet", a.dtype, a.param_dtype)

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Args: x: `(..., H, W, C)`; train: BatchNorm mode. Returns the last feature map."""
    conv = functools.partial(self.conv, dtype=self.dtype, param_dtype=self.param_dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5, dtype=self.dtype, param_dtype=self.param_dtype)
    if self.stem == "imagenet":
      x = conv(self.width, (7, 7), (2, 2), padding=((3, 3), (3, 3)), use_bias=False,
               name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv(self.width, (3, 3), padding=_PAD_3X3, use_bias=False, name="conv1")(x)
      x = nn.relu(norm(name="bn1")(x))
    attention = None
    if self.attention not in (None, "none"):
      attention = functools.partial(_stage_attention, self.attention, self.attention_kwargs,
                                    dtype=self.dtype, param_dtype=self.param_dtype)
    for stage, blocks in enumerate(self.stage_sizes):
      for index in range(blocks):
        x = self.block(self.width * 2**stage, 2 if stage > 0 and index == 0 else 1,
                       attention, conv, norm, name=f"layer{stage + 1}_{index}")(x, train)
    return x


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2))
ResNet34 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3))
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block=Bottleneck)
ResNet101 = functools.partial(ResNet, stage_sizes=(3, 4, 23, 3), block=Bottleneck)
ResNet152 = functools.partial(ResNet, stage_sizes=(3, 8, 36, 3), block=Bottleneck)

#: Backbones by name; the ResNets are torchvision's architectures of the same name.
BACKBONES: Mapping[str, ModuleDef] = {
    "small_cnn": SmallCNN, "resnet18": ResNet18, "resnet34": ResNet34, "resnet50": ResNet50,
    "resnet101": ResNet101, "resnet152": ResNet152}


#: Heads of `RegionAttentionClassifier` (or None).
HEADS = ("region", "multiscale")


class RegionAttentionClassifier(CheckedModule):
  """Backbone (attention per stage) -> region-attention head -> global mean -> Dense.

  The head (`RegionAttention` or `MultiScaleRegionAttention`, built by
  `make_attention(head, **head_kwargs)`, defaults in `HEAD_DEFAULTS`) is the submodule
  "head"; its region weights and map are sown there, and `attention_maps(state, (H, W))`
  returns that map.

  Attributes:
    num_classes: number of classes.
    backbone: a key of `BACKBONES` (`"small_cnn"`, `"resnet18"`, `"resnet34"`,
      `"resnet50"`, ...). With `backbone_kwargs={"stem": "imagenet"}`, `head=None` and
      no attention a ResNet classifier is torchvision's model of that name.
    backbone_kwargs: options of the backbone (e.g. `features=(32, 64, 128)`,
      `placement="residual"` for the small CNN, `stem=...` for a ResNet).
    attention: per-stage attention name (see `make_attention`), or None.
    attention_kwargs: options of the per-stage attention.
    head: `"region"`, `"multiscale"` or None (plain global average pooling).
    head_kwargs: options of the head (e.g. `grid=(4, 4)`, `scorer=ConvScorer()`).
    conv: conv class used by the backbone.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_classes: int
  backbone: str = "small_cnn"
  backbone_kwargs: Mapping[str, Any] | None = None
  attention: str | None = None
  attention_kwargs: Mapping[str, Any] | None = None
  head: str | None = "region"
  head_kwargs: Mapping[str, Any] | None = None
  conv: ModuleDef = Conv
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.integer(a.num_classes, "RegionAttentionClassifier: num_classes")
    _checks.choice(a.backbone, "RegionAttentionClassifier: backbone", BACKBONES)
    _check_options("RegionAttentionClassifier", "backbone_kwargs", a.backbone_kwargs)
    _check_stage_attention("RegionAttentionClassifier", a.attention,
                           a.attention_kwargs)
    if a.head is not None:
      _checks.choice(a.head, "RegionAttentionClassifier: head", HEADS)
    _check_options("RegionAttentionClassifier", "head_kwargs", a.head_kwargs)
    _checks.function(a.conv, "RegionAttentionClassifier: conv", "a conv module class")
    _checks.dtypes("RegionAttentionClassifier", a.dtype, a.param_dtype)

  @nn.compact
  def __call__(self, x, train: bool = False):
    """Classifies images.

    Args:
      x: `(B, H, W, C)` images (any number of leading axes).
      train: BatchNorm uses batch statistics when True.

    Returns:
      `(B, num_classes)` logits, float32.
    """
    x = _image(x, "RegionAttentionClassifier", min_rank=3)
    features = BACKBONES[self.backbone](
        attention=self.attention, attention_kwargs=self.attention_kwargs, conv=self.conv,
        dtype=self.dtype, param_dtype=self.param_dtype, name="backbone",
        **(self.backbone_kwargs or {}))(x, train)
    head = make_attention(self.head, name="head", dtype=self.dtype, param_dtype=self.param_dtype,
                          **{**HEAD_DEFAULTS.get(self.head, {}), **(self.head_kwargs or {})})
    if head is not None:
      features = head(features, train)
    logits = nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                      name="classifier")(functional.global_mean(features))
    return logits.astype(jnp.float32)


#: How `MILClassifier` classifies a bag: pool instance embeddings, then classify the
#: bag ("embedding", MI-Net and attention MIL), or classify each instance, then pool
#: their positive-class probabilities ("instance", mi-Net; Ilse et al., 2018, sec. 2.3).
LEVELS = ("embedding", "instance")


class MILClassifier(CheckedModule):
  """Multiple-instance classifier: instance CNN -> embedding -> pooling -> classifier.

  `level="embedding"`: `AttentionPooling` of the embeddings, then Dense to the classes.
  `level="instance"` (binary bags only, `num_classes=2`): Dense to 2 classes per
  instance, `p_k` its positive-class probability, `P = pool_k p_k` (mean or max over
  the real instances), bag logits `(log(1 - P), log P)`. The instance weights `(B, N)`
  are sown by the "pooling" submodule as `instance_weights` (read them with
  `regionatt_jax.nn.instance_weights`; instance-level max pooling: 1 on the most
  positive instance, split evenly among instances tied there).

  Attributes:
    num_classes: number of bag classes (1 for a single binary logit).
    features: widths of the instance CNN (`SmallCNN` without BatchNorm, so padded
      instances cannot leak into batch statistics). The default three stages give a
      16x16 instance a receptive field of 15 px, the whole digit (see
      `docs/modules.md`).
    embed_dim: instance embedding width.
    pooling: `"attention"`, `"gated"`, `"mean"` or `"max"` (instance level: `"mean"` or
      `"max"`).
    level: `"embedding"` or `"instance"` (`LEVELS`).
    hidden: width of the attention score.
    conv: conv class.
    dtype: compute dtype.
    param_dtype: parameter dtype.
  """
  num_classes: int
  features: Sequence[int] = (16, 32, 64)
  embed_dim: int = 64
  pooling: str = "attention"
  level: str = "embedding"
  hidden: int = 64
  conv: ModuleDef = Conv
  dtype: Dtype | None = None
  param_dtype: Dtype = jnp.float32

  @staticmethod
  def _check_attributes(a) -> None:
    _checks.integer(a.num_classes, "MILClassifier: num_classes")
    _checks.positive_ints(a.features, "MILClassifier: features")
    _checks.integer(a.embed_dim, "MILClassifier: embed_dim")
    _checks.choice(a.pooling, "MILClassifier: pooling", POOLINGS)
    _checks.choice(a.level, "MILClassifier: level", LEVELS)
    if a.level == "instance" and (a.num_classes != 2 or a.pooling not in ("mean", "max")):
      raise ValueError(f"MILClassifier: level='instance' needs num_classes=2 and pooling "
                       f"'mean' or 'max', got {a.num_classes} and {a.pooling!r}")
    _checks.integer(a.hidden, "MILClassifier: hidden")
    _checks.function(a.conv, "MILClassifier: conv", "a conv module class")
    _checks.dtypes("MILClassifier", a.dtype, a.param_dtype)

  @nn.compact
  def __call__(self, x, train: bool = False, mask=None):
    """Classifies bags.

    Args:
      x: `(B, N, h, w, C)` bags of N instance images.
      train: unused (no BatchNorm or dropout).
      mask: optional boolean `(B, N)` mask of real (not padding) instances.

    Returns:
      `(B, num_classes)` logits, float32.
    """
    x = _image(x, "MILClassifier", min_rank=4)
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    h = SmallCNN(self.features, batch_norm=False, conv=self.conv, name="instance_cnn",
                 **kw)(x, train)
    h = nn.relu(nn.Dense(self.embed_dim, name="embed", **kw)(functional.global_mean(h)))
    pooling = AttentionPooling(self.pooling, self.hidden, name="pooling", **kw)
    classifier = nn.Dense(self.num_classes, name="classifier", **kw)
    if self.level == "embedding":
      return classifier(pooling(h, mask)).astype(jnp.float32)
    return functional.mi_net(classifier(h), lambda p: pooling(p, mask))


#: `config.model.name` -> model class.
MODELS: Mapping[str, type[nn.Module]] = {
    "AttentionNet": AttentionNet,
    "RegionAttentionClassifier": RegionAttentionClassifier,
    "MILClassifier": MILClassifier,
}


def _tuples(value):
  """Lists -> tuples, recursively (a config read back from JSON has lists)."""
  if isinstance(value, (list, tuple)):
    return tuple(_tuples(v) for v in value)
  if isinstance(value, Mapping):
    return {k: _tuples(v) for k, v in value.items()}
  return value


def build_model(model_config: Mapping[str, Any], num_classes: int,
                dtype: Dtype | None = None) -> nn.Module:
  """The model a config's `model` section names: the one place configs become modules.

  Args:
    model_config: `{"name": a key of MODELS, "kwargs": {constructor arguments}}`, e.g.
      `config.model` (region scorers are named in `kwargs.head_kwargs.scorer`, see
      `make_attention`).
    num_classes: the dataset's classes; `kwargs` may override it.
    dtype: compute dtype (e.g. `jnp.bfloat16`); None keeps the model's default.

  Returns:
    The unbound module.

  Raises:
    ValueError: an unknown model name or constructor argument, naming the config key.
  """
  name = _checks.choice(model_config["name"], "Config key 'model.name'", MODELS)
  kwargs = model_config.get("kwargs") or {}
  kwargs = _tuples(kwargs.to_dict() if hasattr(kwargs, "to_dict") else dict(kwargs))
  check_fields(MODELS[name], kwargs, "model.kwargs")
  kwargs.setdefault("num_classes", num_classes)
  if dtype is not None:
    kwargs["dtype"] = dtype
  return MODELS[name](**kwargs)
