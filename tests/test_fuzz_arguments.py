"""Fuzz tests of every public entry point's arguments (hypothesis).

Each case starts from a valid call of one entry point (a pure function, a module's
construction, a module's inputs, `make_attention`, the data builders' and pipeline's
arguments, the training config) and replaces one or two arguments by values drawn from
a pool of junk (None, strings, lists, NaN, inf, 0, -1, complex and bool values, NumPy and
JAX scalars, arrays of the wrong dtype or rank, functions, objects) and of values of the
right kind. Each argument has a kind (a positive int, a finite positive number, a pair of
ints, a float array of some rank, ...) whose contract, written here from the docstrings
and independently of the library, says which values are wrong:

- a wrong value must raise `ValueError` or `TypeError` whose message names the argument;
- a value of the right kind may still be refused (a grid that does not divide the image),
  then with `ValueError`/`TypeError` naming an argument of the call;
- any other exception fails the test, and so does a float output that is not finite.

Pure functions run eager or under `jit` (array arguments traced, the others static), so
the same checks must fire at trace time. Cases run are counted per entry point
(`FUZZ_COUNTS`); `REGIONATT_FUZZ_ARG_EXAMPLES` (default 250) sets the examples per entry
point; a default run must run at least 10,000 cases (`MIN_CASES`).
"""

import collections
import math
import os

import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

import regionatt_jax as ra
from regionatt_jax import data
from regionatt_jax import nn as ra_nn
from regionatt_jax import nnx as ra_nnx
from regionatt_jax.train import config as config_lib
from tests import fuzz_helpers
from tests.fuzz_helpers import names_in

EXAMPLES = int(os.environ.get("REGIONATT_FUZZ_ARG_EXAMPLES", "250"))
FUZZ = fuzz_helpers.settings(EXAMPLES)
# NNX constructions run the same checks as the Linen ones (shared code) and each builds
# its parameters abstractly: a fifth of the examples keeps the group's runtime modest.
NNX_EXAMPLES = max(EXAMPLES // 5, 1)

#: entry point -> number of cases run, by outcome ("ok", "refused" or "rejected").
FUZZ_COUNTS: collections.Counter = collections.Counter()


class Opaque:
  """An object of no expected type."""

  def __repr__(self):
    return "Opaque()"


def _noop(*args, **kwargs):
  del args, kwargs


JUNK = (
    None, "junk", b"x", "", ["softmax"], [1.5, "a"], {}, {"a": 1}, set(), (), (1,), (1, 2, 3),
    0, -1, 1, 2, 3, 7, 2.5, 0.0, -0.5, math.nan, math.inf, -math.inf, 1e300, 1 + 2j, True,
    False, np.float32(np.nan), np.float32(0), np.float32(2), np.float64(-1), np.int64(0),
    np.int64(4), np.bool_(True), np.complex64(1), jnp.float32(0), jnp.float32(1.5),
    jnp.float32(np.inf), np.array(2.0), np.array([1.0, 2.0]), np.zeros((2, 2), np.int32),
    np.zeros((2, 3), bool), np.ones((1, 4, 4, 2), np.complex64), _noop, Opaque(),
    "softmax", "sum", "mean", "gated", "se", "region", "train", "float32", jnp.float32,
    jnp.int32, np.float16, "gru",
)


# --- kinds: which values the documented contract accepts ---------------------------------

def _is_int(v) -> bool:
  return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _is_real(v) -> bool:
  """A real number: Python/NumPy int or float (not bool), or a 0-d real array."""
  if isinstance(v, (bool, np.bool_)) or v is None:
    return False
  if isinstance(v, (int, float, np.integer, np.floating)):
    return True
  return (_as_array(v) is v and v.shape == ()
          and (np.issubdtype(v.dtype, np.floating) or np.issubdtype(v.dtype, np.integer))
          and v.dtype != bool)


def _as_array(v):
  """The array a value stands for, or None when it is not array-like."""
  if hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, type):
    return v
  if isinstance(v, (list, tuple, int, float, complex)):
    try:
      return np.asarray(v)
    except ValueError:
      return None
  return None


def float_array(min_rank):
  def valid(v):
    a = _as_array(v)
    return (a is not None and a.dtype != object and jnp.issubdtype(a.dtype, jnp.floating)
            and a.ndim >= min_rank)
  return valid


def bool_array_or_none(v):
  a = _as_array(v)
  return v is None or (a is not None and a.dtype == bool)


def pair(v):
  if _is_int(v):
    return v >= 1
  return (isinstance(v, (tuple, list)) and len(v) == 2
          and all(_is_int(x) and x >= 1 for x in v))


def pair_or_none(v):
  return v is None or pair(v)


def shape_pair(v):
  return isinstance(v, (tuple, list)) and pair(v)


def pairs(v):
  return isinstance(v, (tuple, list)) and len(v) > 0 and all(pair(g) for g in v)


def positive_int(v):
  return _is_int(v) and v >= 1


def non_negative_int(v):
  return _is_int(v) and v >= 0


def odd_positive_int_or_none(v):
  return v is None or (positive_int(v) and v % 2 == 1)


def positive_ints(v):
  return isinstance(v, (tuple, list)) and all(positive_int(x) for x in v)


def positive_real(v):
  return _is_real(v) and math.isfinite(float(v)) and float(v) > 0


def finite_real(v):
  return _is_real(v) and math.isfinite(float(v))


def unit_interval(v):
  return finite_real(v) and 0 <= float(v) <= 1


def boolean(v):
  return isinstance(v, (bool, np.bool_))


def function(v):
  return callable(v)


def function_or_none(v):
  return v is None or callable(v)


def choice(*options):
  return lambda v: isinstance(v, str) and v in options


def choice_or_none(*options):
  return lambda v: v is None or (isinstance(v, str) and v in options)


def float_dtype(optional=True):
  def valid(v):
    if v is None:
      return optional
    try:
      return jnp.issubdtype(jnp.dtype(v), jnp.floating)
    except TypeError:
      return False
  return valid


def mapping_or_none(v):
  return v is None or isinstance(v, dict)


def path(v):
  return isinstance(v, (str, os.PathLike)) and bool(str(v))


def anything(v):
  del v
  return True


NORMALIZERS = ("softmax", "sigmoid", "sparsemax", "none")
AGGREGATIONS = ("sum", "mean", "reassemble")
POOLS = ("mean", "meanmax")
ATTENTION_KINDS = ("se", "eca", "spatial", "cbam", "coordinate", "region", "multiscale",
                   "none")


class Arg:
  """One argument of an entry point: its valid value in the base call and its kind."""

  def __init__(self, value, valid, samples=()):
    self.value, self.valid, self.samples = value, valid, tuple(samples)


class Entry:
  """An entry point: `call(**arguments)`, its arguments, and which ones are arrays
  (traced under `jit` when the entry point is pure)."""

  def __init__(self, call, args, arrays=(), pure=False):
    self.call, self.args, self.arrays, self.pure = call, args, tuple(arrays), pure


def _x(shape, dtype=np.float32):
  return np.random.default_rng(0).normal(size=shape).astype(dtype)


def _mean_score(regions):
  return regions.mean(axis=(-3, -2, -1))


# --- the entry points ----------------------------------------------------------------

ARRAY_SAMPLES = (_x((1, 4, 4, 2)), _x((2, 4, 4, 1), np.float16), _x((4, 4)), _x((3,)))
PURE = {
    "partition": Entry(
        lambda x, grid, pad: ra.partition(x, grid, pad=pad),
        dict(x=Arg(_x((1, 4, 4, 2)), float_array(3), ARRAY_SAMPLES),
             grid=Arg((2, 2), pair, [(4, 4), 2, (3, 3)]), pad=Arg(False, boolean)),
        arrays=["x"], pure=True),
    "partition/windows": Entry(
        lambda x, size, stride, pad: ra.partition(x, size=size, stride=stride, pad=pad),
        dict(x=Arg(_x((1, 4, 4, 2)), float_array(3), ARRAY_SAMPLES),
             size=Arg((2, 2), pair, [(3, 3), 1]), stride=Arg((1, 1), pair_or_none, [None, 2]),
             pad=Arg(True, boolean)),
        arrays=["x"], pure=True),
    "unpartition": Entry(
        lambda regions, grid, image_shape, pad: ra.unpartition(
            regions, grid, image_shape=image_shape, pad=pad),
        dict(regions=Arg(_x((1, 4, 2, 2, 2)), float_array(4), [_x((4, 2, 2, 1))]),
             grid=Arg((2, 2), pair, [(1, 4), 2]),
             image_shape=Arg((4, 4), lambda v: v is None or shape_pair(v), [(3, 4), (4, 3)]),
             pad=Arg(False, boolean)),
        arrays=["regions"], pure=True),
    "normalize": Entry(
        lambda scores, kind, mask, temperature: ra.normalize(scores, kind, mask, temperature),
        dict(scores=Arg(_x((2, 3)), float_array(1), [_x((3,)), _x((2, 0)), _x((2, 3), np.float16)]),
             kind=Arg("softmax", choice(*NORMALIZERS), NORMALIZERS),
             mask=Arg(None, bool_array_or_none, [np.ones((2, 3), bool), np.ones(3, bool),
                                                 np.ones((2, 4), bool)]),
             temperature=Arg(1.0, positive_real, [0.5, 3, np.float32(2), np.array(0.5),
                                                 jnp.float32(2.0), 1e-3])),
        arrays=["scores", "mask"], pure=True),
    "weight": Entry(
        lambda regions, weights: ra.weight(regions, weights),
        dict(regions=Arg(_x((1, 3, 2, 2, 1)), float_array(4), [_x((3, 2, 2, 1))]),
             weights=Arg(_x((1, 3)), float_array(1), [_x((3,)), _x((2, 3)), _x((1, 4))])),
        arrays=["regions", "weights"], pure=True),
    "aggregate": Entry(
        lambda weighted, mode: ra.aggregate(weighted, mode),
        dict(weighted=Arg(_x((1, 3, 2, 2, 1)), float_array(4), [_x((3, 2, 2, 1)),
                                                                 _x((1, 0, 2, 2, 1))]),
             mode=Arg("sum", choice("sum", "mean"), ["mean", "reassemble"])),
        arrays=["weighted"], pure=True),
    "aggregate/reassemble": Entry(
        lambda weighted, grid: ra.aggregate(weighted, "reassemble", grid=grid),
        dict(weighted=Arg(_x((1, 3, 2, 2, 1)), float_array(4), [_x((3, 2, 2, 1))]),
             grid=Arg((3, 1), pair, [(1, 3), 3])),
        arrays=["weighted"], pure=True),
    "region_attention": Entry(
        lambda x, score_fn, grid, normalize, aggregate, mask, temperature, pad:
            ra.region_attention(x, score_fn, grid, normalize=normalize, aggregate=aggregate,
                                mask=mask, temperature=temperature, pad=pad),
        dict(x=Arg(_x((1, 4, 4, 2)), float_array(3), ARRAY_SAMPLES),
             score_fn=Arg(_mean_score, function, [ra.per_region(jnp.max), lambda r: 1.0]),
             grid=Arg((2, 2), pair, [(4, 4), 2, (3, 3)]),
             normalize=Arg("softmax", choice(*NORMALIZERS), NORMALIZERS),
             aggregate=Arg("sum", choice(*AGGREGATIONS), AGGREGATIONS),
             mask=Arg(None, bool_array_or_none, [np.ones((1, 4), bool), np.ones(4, bool)]),
             temperature=Arg(1.0, positive_real, [0.5, np.float32(2), np.array(3.0)]),
             pad=Arg(False, boolean)),
        arrays=["x", "mask"], pure=True),
    "attention_map": Entry(
        lambda weights, grid, image_shape: ra.attention_map(weights, grid,
                                                            image_shape=image_shape),
        dict(weights=Arg(_x((1, 4)), float_array(1), [_x((4,)), _x((1, 5))]),
             grid=Arg((2, 2), pair, [(1, 4), 2]),
             image_shape=Arg((4, 4), shape_pair, [(4, 8), (5, 5)])),
        arrays=["weights"], pure=True),
    "region_mask/boxes/layout": Entry(
        lambda image_shape, grid, pad: (ra.region_mask(image_shape, grid, pad=pad),
                                        ra.region_boxes(image_shape, grid, pad=pad),
                                        ra.region_layout(image_shape, grid, pad=pad).counts),
        dict(image_shape=Arg((4, 6), shape_pair, [(1, 1), (5, 5)]),
             grid=Arg((2, 3), pair, [(4, 4), 2]), pad=Arg(True, boolean))),
    "per_region": Entry(
        lambda region_fn: ra.per_region(region_fn)(_x((1, 2, 2, 2, 1))),
        dict(region_fn=Arg(jnp.mean, function, [jnp.max]))),
}

MODULE_CLASSES = {  # name: (class, {attribute: Arg})
    "RegionAttention": (ra_nn.RegionAttention, dict(
        grid=Arg((2, 2), pair_or_none, [3]), pad=Arg(False, boolean),
        scorer=Arg(None, function_or_none, [ra_nn.GatedScorer(parent=None)]),
        normalize=Arg("softmax", choice(*NORMALIZERS), NORMALIZERS),
        aggregate=Arg("sum", choice(*AGGREGATIONS), AGGREGATIONS),
        temperature=Arg(1.0, positive_real, [0.1, np.float32(2)]),
        dtype=Arg(None, float_dtype(), [jnp.bfloat16]),
        param_dtype=Arg(jnp.float32, float_dtype(optional=False), [jnp.float16]))),
    "MultiScaleRegionAttention": (ra_nn.MultiScaleRegionAttention, dict(
        grids=Arg(((1, 1), (2, 2)), pairs, [((2, 2),), [(1, 1), 3]]),
        mode=Arg("parallel", choice("parallel", "coarse_to_fine"), ["coarse_to_fine"]),
        scorer=Arg(ra_nn.MLPScorer, function, [ra_nn.GatedScorer]),
        normalize=Arg("softmax", choice(*NORMALIZERS), NORMALIZERS),
        aggregate=Arg("sum", choice(*AGGREGATIONS), AGGREGATIONS),
        dtype=Arg(None, float_dtype()))),
    "AttentionPooling": (ra_nn.AttentionPooling, dict(
        kind=Arg("attention", choice("attention", "gated", "mean", "max"), ["max", "gated"]),
        hidden=Arg(4, positive_int), dtype=Arg(None, float_dtype()))),
    "AttentionScore": (ra_nn.AttentionScore, dict(
        hidden=Arg(4, positive_int), gated=Arg(False, boolean))),
    "MLPScorer": (ra_nn.MLPScorer, dict(
        hidden=Arg((4,), positive_ints, [(), (2, 3)]), pool=Arg("mean", choice(*POOLS), POOLS),
        param_dtype=Arg(jnp.float32, float_dtype(optional=False)))),
    "GatedScorer": (ra_nn.GatedScorer, dict(
        hidden=Arg(4, positive_int), pool=Arg("mean", choice(*POOLS), POOLS))),
    "ConvScorer": (ra_nn.ConvScorer, dict(
        features=Arg((2,), positive_ints, [(2, 3)]), kernel_size=Arg(3, positive_int),
        conv=Arg(ra_nn.conv.Conv, function))),
    "RecurrentScorer": (ra_nn.RecurrentScorer, dict(
        hidden=Arg(4, positive_int), cell=Arg("gru", choice("gru", "lstm"), ["lstm"]),
        bidirectional=Arg(False, boolean), pool=Arg("mean", choice(*POOLS), POOLS))),
    "SelfAttentionScorer": (ra_nn.SelfAttentionScorer, dict(
        embed_dim=Arg(8, positive_int, [6]), num_heads=Arg(2, positive_int, [4, 8]),
        position_embeddings=Arg(True, boolean), mlp_ratio=Arg(2, positive_int),
        pool=Arg("mean", choice(*POOLS), POOLS))),
    "SqueezeExcite": (ra_nn.SqueezeExcite, dict(
        reduction=Arg(4, positive_int), dtype=Arg(None, float_dtype()))),
    "EfficientChannelAttention": (ra_nn.EfficientChannelAttention, dict(
        kernel_size=Arg(None, odd_positive_int_or_none, [3, 5]),
        gamma=Arg(2.0, positive_real, [1, 0.5]), b=Arg(1.0, finite_real, [0, -2.0]))),
    "SpatialAttention": (ra_nn.SpatialAttention, dict(kernel_size=Arg(7, positive_int))),
    "CBAM": (ra_nn.CBAM, dict(reduction=Arg(4, positive_int), kernel_size=Arg(7, positive_int))),
    "CoordinateAttention": (ra_nn.CoordinateAttention, dict(
        reduction=Arg(8, positive_int), min_hidden=Arg(8, positive_int),
        momentum=Arg(0.9, unit_interval, [0, 1, 0.5]))),
    "AttentionNet": (ra_nn.AttentionNet, dict(
        num_classes=Arg(3, positive_int), features=Arg((4, 8), positive_ints),
        conv=Arg(ra_nn.conv.Conv, function))),
    "SmallCNN": (ra_nn.SmallCNN, dict(
        features=Arg((4, 8), positive_ints), attention=Arg(None, choice_or_none(*ATTENTION_KINDS),
                                                           ATTENTION_KINDS),
        attention_kwargs=Arg(None, mapping_or_none, [{"reduction": 2}]),
        placement=Arg("path", choice("path", "residual"), ["residual"]),
        batch_norm=Arg(True, boolean))),
    "ResNet": (ra_nn.ResNet, dict(
        stage_sizes=Arg((1, 1), positive_ints), width=Arg(8, positive_int),
        stem=Arg("small", choice("small", "imagenet"), ["imagenet"]),
        attention=Arg("se", choice_or_none(*ATTENTION_KINDS), ATTENTION_KINDS))),
    "RegionAttentionClassifier": (ra_nn.RegionAttentionClassifier, dict(
        num_classes=Arg(3, positive_int),
        backbone=Arg("small_cnn", choice("small_cnn", "resnet18", "resnet34"), ["resnet18"]),
        backbone_kwargs=Arg(None, mapping_or_none, [{"features": (4,)}]),
        attention=Arg(None, choice_or_none(*ATTENTION_KINDS), ATTENTION_KINDS),
        head=Arg("region", choice_or_none("region", "multiscale"), ["multiscale"]),
        head_kwargs=Arg(None, mapping_or_none, [{"grid": (2, 2)}]))),
    "MILClassifier": (ra_nn.MILClassifier, dict(
        num_classes=Arg(1, positive_int), features=Arg((4,), positive_ints),
        embed_dim=Arg(8, positive_int),
        pooling=Arg("attention", choice("attention", "gated", "mean", "max"), ["max"]),
        level=Arg("embedding", choice("embedding", "instance"), ["instance"]),
        hidden=Arg(4, positive_int))),
}

NN = {f"{name}()": Entry(lambda cls=cls, **kw: cls(**kw), args)
      for name, (cls, args) in MODULE_CLASSES.items()}


def _abstract_init(module, *inputs, **kwargs):
  """`module.init` traced abstractly: the checks run, nothing is computed or compiled."""
  return jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs, **kwargs))


NN.update({
    "make_attention(kind)": Entry(
        ra_nn.make_attention,
        dict(kind=Arg("region", choice_or_none(*ATTENTION_KINDS), ATTENTION_KINDS))),
    "make_attention(region, scorer)": Entry(
        lambda scorer: ra_nn.make_attention("region", grid=(2, 2), scorer=scorer),
        dict(scorer=Arg("gated", lambda v: v is None or callable(v) or (isinstance(v, str) and v in ra_nn.SCORERS),
                        list(ra_nn.SCORERS) + [ra_nn.ConvScorer(parent=None)]))),
    "eca_kernel_size": Entry(
        ra_nn.eca_kernel_size,
        dict(channels=Arg(64, positive_int), gamma=Arg(2.0, positive_real),
             b=Arg(1.0, finite_real))),
    "pool_regions": Entry(
        ra_nn.pool_regions,
        dict(regions=Arg(_x((1, 3, 2, 2, 2)), float_array(4), [_x((3, 2, 2, 2))]),
             pool=Arg("mean", choice(*POOLS), POOLS), dtype=Arg(None, float_dtype()))),
    "attention_maps": Entry(
        lambda image_shape, method: ra_nn.attention_maps(
            {"intermediates": {"attention_map": (_x((1, 2, 2)),)}}, image_shape,
            method=method),
        dict(image_shape=Arg((4, 4), pair, [(2, 6)]),
             method=Arg("nearest", choice(*ra_nn.maps.RESIZE_METHODS), ["linear"]))),
    "RegionAttention(x, mask)": Entry(
        lambda x, mask: _abstract_init(ra_nn.RegionAttention(grid=(2, 2)), x, mask=mask),
        dict(x=Arg(_x((1, 4, 4, 2)), float_array(3), ARRAY_SAMPLES),
             mask=Arg(None, bool_array_or_none, [np.ones(4, bool), np.ones(3, bool)]))),
    "AttentionPooling(h, mask)": Entry(
        lambda h, mask: _abstract_init(ra_nn.AttentionPooling(hidden=4), h, mask),
        dict(h=Arg(_x((2, 3, 4)), float_array(2), [_x((3, 4)), _x((2, 0, 4))]),
             mask=Arg(None, bool_array_or_none, [np.ones(3, bool), np.ones(4, bool)]))),
    "SqueezeExcite(x)": Entry(
        lambda x: _abstract_init(ra_nn.SqueezeExcite(reduction=2), x),
        dict(x=Arg(_x((1, 4, 4, 2)), float_array(3), ARRAY_SAMPLES))),
    "MLPScorer(regions)": Entry(
        lambda regions: _abstract_init(ra_nn.MLPScorer(hidden=(2,)), regions),
        dict(regions=Arg(_x((1, 3, 2, 2, 2)), float_array(4), [_x((3, 2, 2, 2))]))),
    "RegionAttentionClassifier(x)": Entry(
        lambda x: _abstract_init(ra_nn.RegionAttentionClassifier(
            2, backbone_kwargs={"features": (2,)}, head_kwargs={"grid": (2, 2)}), x),
        dict(x=Arg(_x((1, 4, 4, 1)), float_array(3), ARRAY_SAMPLES))),
    "MILClassifier(x, mask)": Entry(
        lambda x, mask: _abstract_init(ra_nn.MILClassifier(1, features=(2,), embed_dim=2,
                                                           hidden=2), x, mask=mask),
        dict(x=Arg(_x((1, 3, 4, 4, 1)), float_array(4), [_x((3, 4, 4, 1))]),
             mask=Arg(None, bool_array_or_none, [np.ones((1, 3), bool)]))),
})


# The NNX twins take the Linen attributes as arguments, after the input width
# `in_features`; scorers and convs are their NNX twins.
NNX_ARGS = {
    "RegionAttention": dict(scorer=Arg(None, function_or_none, [
        nnx.eval_shape(lambda: ra_nnx.GatedScorer(2, rngs=nnx.Rngs(0)))])),
    "MultiScaleRegionAttention": dict(
        scorer=Arg(ra_nnx.MLPScorer, function, [ra_nnx.GatedScorer])),
    "ConvScorer": dict(conv=Arg(ra_nnx.Conv, function)),
    "AttentionNet": dict(conv=Arg(ra_nnx.Conv, function)),
}
NNX_OPTIONAL_WIDTH = ("AttentionPooling", "EfficientChannelAttention", "SpatialAttention")


def _nnx_construction(cls):
  """Constructs `cls` abstractly (`nnx.eval_shape`): the checks run, no parameter is drawn."""
  return lambda **kw: nnx.eval_shape(lambda: cls(rngs=nnx.Rngs(0), **kw))


NNX = {f"nnx.{name}()": Entry(_nnx_construction(getattr(ra_nnx, name)), {
    "in_features": Arg(2, (lambda v: v is None or positive_int(v))
                       if name in NNX_OPTIONAL_WIDTH else positive_int, [1, 3]),
    **args, **NNX_ARGS.get(name, {})}) for name, (_, args) in MODULE_CLASSES.items()}
NNX["nnx.make_attention(kind)"] = Entry(
    lambda kind, in_features: nnx.eval_shape(
        lambda: ra_nnx.make_attention(kind, in_features, rngs=nnx.Rngs(0))),
    dict(kind=Arg("region", choice_or_none(*ATTENTION_KINDS), ATTENTION_KINDS),
         in_features=Arg(32, positive_int, [64])))


DATA = {
    "dataset_spec": Entry(
        data.dataset_spec,
        dict(name=Arg("cluttered_digits/tiny", choice(*data.known_names()),
                      data.known_names()))),
    "host_batch_size": Entry(
        data.host_batch_size,
        dict(global_batch_size=Arg(8, positive_int, [6]), process_count=Arg(2, positive_int),
             local_device_count=Arg(1, positive_int, [4]))),
    "normalize_images": Entry(
        data.normalize_images,
        dict(images=Arg(np.zeros((2, 2), np.uint8),
                        lambda v: getattr(v, "dtype", None) == np.uint8,
                        [np.full((1, 3), 255, np.uint8)]))),
    "augment_example": Entry(
        lambda pad, hflip, vflip: data.augment_example(
            {"image": np.zeros((4, 4, 1), np.uint8), "box": np.array([0, 0, 2, 2], np.float32)},
            np.random.default_rng(0), pad=pad, hflip=hflip, vflip=vflip),
        dict(pad=Arg(1, non_negative_int, [0, 2]), hflip=Arg(True, boolean),
             vflip=Arg(False, boolean))),
    "resolve_data_dir": Entry(
        data.resolve_data_dir,
        dict(data_dir=Arg("/tmp/tfds", lambda v: isinstance(v, (str, os.PathLike)),
                          ["", "~/tfds"]))),
    # data_dir holds nothing: a call with every argument valid stops at "not prepared".
    "padded_batches": Entry(
        lambda **kwargs: next(data.padded_batches(**kwargs)),
        dict(name=Arg("cluttered_digits/tiny", choice(*data.known_names()), ["digit_bags/tiny"]),
             split=Arg("validation", choice("train", "validation", "test"), ["test"]),
             data_dir=Arg("/nonexistent/tfds", path), global_batch_size=Arg(4, positive_int),
             seed=Arg(0, non_negative_int, [5]))),
    "make_dataset": Entry(
        data.make_dataset,
        dict(name=Arg("cluttered_digits/tiny", choice(*data.known_names()), ["digit_bags/tiny"]),
             split=Arg("train", choice("train", "validation", "test"), ["test"]),
             data_dir=Arg("/nonexistent/tfds", path), global_batch_size=Arg(4, positive_int),
             seed=Arg(0, non_negative_int, [5]), shuffle=Arg(True, boolean),
             augment=Arg(False, boolean), num_epochs=Arg(None, lambda v: v is None or positive_int(v)),
             drop_remainder=Arg(True, boolean),
             process_index=Arg(0, lambda v: v is None or non_negative_int(v), [None]),
             process_count=Arg(1, lambda v: v is None or positive_int(v), [None]))),
}


def _config_leaves(tree, prefix=""):
  """`(dotted key, default)` of every leaf of the base config (free-form mappings whole)."""
  for key, value in tree.items():
    name = f"{prefix}{key}"
    if isinstance(value, dict) and name not in config_lib._FREE_FORM:
      yield from _config_leaves(value, f"{name}.")
    else:
      yield name, value


def _config_kind(default):
  """The config's contract: values of the default's Python type (an int is a float)."""
  if isinstance(default, bool):
    return lambda v: isinstance(v, bool)
  if isinstance(default, int):
    return lambda v: isinstance(v, int) and not isinstance(v, bool)
  if isinstance(default, float):
    return lambda v: (isinstance(v, (int, float)) and not isinstance(v, bool)
                      and math.isfinite(v))
  if isinstance(default, str):
    return lambda v: isinstance(v, str)
  if isinstance(default, dict):
    return lambda v: isinstance(v, dict)
  return anything


def _validate(**leaves):
  tree = config_lib.base_config().to_dict()
  for name, value in leaves.items():
    *parents, last = name.split("/")
    node = tree
    for part in parents:
      node = node[part]
    node[last] = value
  config_lib.validate_config(ml_collections.ConfigDict(tree), num_devices=1)


# Keys as call arguments: "train.steps" -> "train/steps" (a keyword cannot hold dots).
CONFIG = {
    "validate_config": Entry(
        _validate,
        {name.replace(".", "/"): Arg(default, _config_kind(default))
         for name, default in _config_leaves(config_lib.base_config().to_dict())}),
}

ENTRIES = {**PURE, **NN, **NNX, **DATA, **CONFIG}


# --- running a case ------------------------------------------------------------------

def _message_names(name: str) -> list[str]:
  """How a message may name an argument: itself, and a config key with dots."""
  return [name, name.replace("/", ".")]


def _finite(out) -> bool:
  for leaf in jax.tree.leaves(out):
    leaf = np.asarray(leaf)
    if np.issubdtype(leaf.dtype, np.floating) and not np.isfinite(
        leaf.astype(np.float64)).all():
      return False
  return True


def run_entry(entry_name: str, entry: Entry, changes: dict, use_jit: bool):
  """Calls the entry point with `changes` applied and checks the outcome."""
  kwargs = {name: arg.value for name, arg in entry.args.items()}
  kwargs.update(changes)
  wrong = {name for name, value in changes.items() if not entry.args[name].valid(value)}
  traced = [n for n in entry.arrays if use_jit and isinstance(kwargs[n], np.ndarray)]
  if traced:
    static = {n: v for n, v in kwargs.items() if n not in traced}
    call = lambda: jax.jit(lambda *arrays: entry.call(**static, **dict(zip(traced, arrays))))(
        *(kwargs[n] for n in traced))
  else:
    call = lambda: entry.call(**kwargs)
  try:
    out = call()
  except (ValueError, TypeError) as error:
    message = str(error)
    if wrong:  # a value of the right kind changed with it may be the one refused
      assert names_in(message, [m for n in changes for m in _message_names(n)]), (
          f"{entry_name}: the message does not name any of the changed arguments "
          f"{sorted(changes)} ({sorted(wrong)} wrong): {type(error).__name__}: {message}")
      FUZZ_COUNTS[entry_name, "rejected"] += 1
    else:
      assert names_in(message, [m for n in entry.args for m in _message_names(n)]), (
          f"{entry_name}: refused {changes!r} without naming an argument: "
          f"{type(error).__name__}: {message}")
      FUZZ_COUNTS[entry_name, "refused"] += 1
    return
  assert not wrong, f"{entry_name}: accepted {changes!r} although {sorted(wrong)} are wrong"
  if entry.pure:
    assert _finite(out), f"{entry_name}: non-finite output for finite inputs and {changes!r}"
  FUZZ_COUNTS[entry_name, "ok"] += 1


@st.composite
def changes_of(draw, entry: Entry):
  """One or two arguments replaced, by junk or by values of their kind (or none)."""
  names = sorted(entry.args)
  count = min(draw(st.sampled_from([0] + [1] * 6 + [2] * 2)), len(names))
  changed = draw(st.lists(st.sampled_from(names), min_size=count, max_size=count,
                          unique=True)) if count else []
  out = {}
  for name in changed:
    arg = entry.args[name]
    out[name] = draw(st.sampled_from(arg.samples + JUNK) if arg.samples
                     else st.sampled_from(JUNK))
  return out


@pytest.fixture(scope="module", autouse=True)
def report_counts():
  """Prints the case counts after the module (and writes them where asked)."""
  yield
  fuzz_helpers.report(FUZZ_COUNTS, "argument fuzz", suffix=".arguments.json")


def fuzz_property(entry_name: str, entry: Entry, settings=FUZZ):
  """The hypothesis test of one entry point."""

  @settings
  @hypothesis.given(changes_of(entry), st.booleans())
  def property_(changes, use_jit):
    run_entry(entry_name, entry, changes, use_jit and entry.pure)

  return property_


GROUPS = {"pure": PURE, "nn": NN, "nnx": NNX, "data": DATA, "config": CONFIG}
#: Cases each group must run by default (REGIONATT_FUZZ_ARG_EXAMPLES=250): together
#: over 10,000. Entry points with few possible cases exhaust them sooner.
MIN_CASES = {"pure": 2500, "nn": 6750, "nnx": 950, "data": 1550, "config": 200}


@pytest.mark.parametrize("group", list(GROUPS))
def test_fuzz_arguments(group):
  before = sum(FUZZ_COUNTS.values())
  for entry_name, entry in GROUPS[group].items():
    fuzz_property(entry_name, entry,
                  fuzz_helpers.settings(NNX_EXAMPLES) if group == "nnx" else FUZZ)()
    outcomes = {outcome for (name, outcome), n in FUZZ_COUNTS.items() if name == entry_name}
    # Both sides of the contract were exercised, not only the error paths.
    assert "rejected" in outcomes and ({"ok", "refused"} & outcomes), (entry_name, outcomes)
  ran = sum(FUZZ_COUNTS.values()) - before
  assert ran >= MIN_CASES[group] * EXAMPLES // 250, (group, ran)
