"""Fuzz tests of the public pure API and the Flax modules (hypothesis).

Every generated call must either return an output of the documented shape (finite when
the inputs are finite) or raise `ValueError`/`TypeError` whose message names an argument
that is actually wrong. Whether a call is valid, and which arguments are wrong, is
decided here from the documented contract (docs/design.md and the docstrings), independently
of the code under test; shapes come from `tests/reference.layout`. A few cheap value
invariants (a grid partition is a permutation of the pixels, normalized weights are a
distribution, boxes match masks) catch outputs that have the right shape but are wrong.

Cases run are counted per target and outcome (`FUZZ_COUNTS`), printed at the end of the
module and checked: each target must have exercised both valid and invalid calls.
Examples per property: `REGIONATT_FUZZ_EXAMPLES` (default 50); the default run is
derandomized (reproducible in CI), `REGIONATT_FUZZ_RANDOM=1` draws new cases each run.
"""

import collections
import functools
import os

import flax.linen as nn
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import regionatt_jax as ra
from regionatt_jax import nn as ra_nn
from tests import fuzz_helpers
from tests import reference
from tests.fuzz_helpers import names_in

EXAMPLES = int(os.environ.get("REGIONATT_FUZZ_EXAMPLES", "50"))
FUZZ = fuzz_helpers.settings(EXAMPLES)

#: (target, "ok" | "error") -> number of cases run.
FUZZ_COUNTS: collections.Counter = collections.Counter()

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
OTHER_DTYPES = ("bool", "int8", "uint8", "int32", "complex64")
# Real floats most of the time, so that most cases get past the dtype check.
dtypes = st.sampled_from(FLOAT_DTYPES * 4 + OTHER_DTYPES)
lead_shapes = st.lists(st.integers(1, 3), max_size=2).map(tuple)
offsets = st.sampled_from([0] * 6 + [-1, 1])  # mostly matching region counts
# hypothesis favours small integers and first elements; a rare case goes last.
rarely = st.sampled_from([False] * 7 + [True])



@pytest.fixture(scope="module", autouse=True)
def report_counts():
  """Prints the case counts after the module (and writes them where asked)."""
  yield
  fuzz_helpers.report(FUZZ_COUNTS, "fuzz")


def make_array(seed: int, shape, dtype: str, nan: bool = False, scale: float = 3.0):
  """A random array; `nan=True` puts a NaN at one position of a float array."""
  rng = np.random.default_rng(seed)
  if dtype == "bool":
    return rng.random(shape) < 0.5
  if dtype.startswith(("int", "uint")):
    return rng.integers(0, 5, shape).astype(dtype)
  values = rng.normal(size=shape) * scale
  if nan and values.size:
    values.flat[rng.integers(values.size)] = np.nan
  if dtype == "complex64":
    return (values + 1j * values).astype(np.complex64)
  return np.asarray(jnp.asarray(values, dtype=dtype)) if dtype == "bfloat16" else values.astype(dtype)


def is_float(dtype: str) -> bool:
  return dtype in FLOAT_DTYPES


def run_case(target: str, problems: set, call):
  """Calls `call()`; checks it raised naming one of `problems`, or returned if none.

  Returns:
    The output of a valid call, or None after an expected error.
  """
  try:
    out = call()
  except (ValueError, TypeError) as error:
    assert problems, f"{target}: a valid call raised {type(error).__name__}: {error}"
    assert names_in(str(error), problems), (
        f"{target}: the message does not name any of the wrong arguments {sorted(problems)}: "
        f"{type(error).__name__}: {error}")
    FUZZ_COUNTS[target, "error"] += 1
    return None
  assert not problems, f"{target}: returned although {sorted(problems)} are wrong"
  FUZZ_COUNTS[target, "ok"] += 1
  return out


def check_output(out, shape, finite: bool, what: str = "output"):
  out = np.asarray(jnp.asarray(out, jnp.float32))
  assert out.shape == tuple(shape), f"{what} has shape {out.shape}, documented {tuple(shape)}"
  if finite:
    assert np.isfinite(out).all(), f"{what} is not finite for finite inputs"
  return out


# --- the documented contract of layouts ----------------------------------------------

def pair_problem(value) -> bool:
  """An int or a pair of ints (not bools), each >= 1, is valid."""
  if isinstance(value, int) and not isinstance(value, bool):
    value = (value, value)
  if not (isinstance(value, tuple) and len(value) == 2 and all(
      isinstance(v, int) and not isinstance(v, bool) for v in value)):
    return True
  return min(value) < 1


def as_pair(value):
  return (value, value) if isinstance(value, int) else value


def layout_problems(image, grid=None, size=None, stride=None, pad=False) -> set:
  """The layout arguments that are wrong for an `image` `(H, W)`, per docs/design.md."""
  if (grid is None) == (size is None):
    return {"grid", "size"}
  if grid is not None:
    if stride is not None:
      return {"stride"}
    if pair_problem(grid):
      return {"grid"}
    counts = as_pair(grid)
    if any(n > length for n, length in zip(counts, image)):
      return {"grid"}
    if not pad and any(length % n for n, length in zip(counts, image)):
      return {"grid"}
    return set()
  if pair_problem(size) or (stride is not None and pair_problem(stride)):
    return {"size"} if pair_problem(size) else {"stride"}
  if pad:
    return set()
  size, stride = as_pair(size), as_pair(stride if stride is not None else size)
  if any(s > length for s, length in zip(size, image)):
    return {"size"}
  if any((length - s) % t for s, t, length in zip(size, stride, image)):
    return {"size", "stride"}
  return set()


def expected_layout(image, grid=None, size=None, stride=None, pad=False):
  """`(N, (h, w))` of a valid layout, from the NumPy reference."""
  kw = dict(grid=as_pair(grid), pad=pad) if grid is not None else dict(
      size=as_pair(size), stride=as_pair(stride) if stride is not None else None, pad=pad)
  counts, region, _ = reference.layout(image, **kw)
  return counts[0] * counts[1], tuple(region)


def regions_with_pixels(image, grid=None, size=None, stride=None, pad=False):
  """`(N,)` bool: which regions of a valid layout hold at least one image pixel."""
  kw = dict(grid=as_pair(grid), pad=pad) if grid is not None else dict(
      size=as_pair(size), stride=as_pair(stride) if stride is not None else None, pad=pad)
  (gh, gw), _, (sh, sw) = reference.layout(image, **kw)
  rows, cols = np.meshgrid(np.arange(gh) * sh < image[0], np.arange(gw) * sw < image[1],
                           indexing="ij")
  return (rows & cols).ravel()


bad_pairs = st.sampled_from([0, -1, (2.0, 2), (True, 2), (1, 2, 3), "2", (0, 1)])


def divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def layouts(draw, image):
  """Layout keyword arguments for an image `(H, W)`: mostly valid, sometimes wrong."""
  height, width = image
  kind = draw(st.sampled_from(["divisor_grid"] * 4 + ["grid"] * 2 + ["windows"] * 3
                              + ["both", "bad"]))
  pad = draw(st.booleans())
  if kind == "bad":
    return dict(grid=draw(bad_pairs), pad=pad)
  if kind == "divisor_grid":
    grid = (draw(st.sampled_from(divisors(height))), draw(st.sampled_from(divisors(width))))
  else:
    grid = (draw(st.integers(1, height + 1)), draw(st.integers(1, width + 1)))
  if draw(st.booleans()) and grid[0] == grid[1]:
    grid = grid[0]
  if kind in ("grid", "divisor_grid"):
    return dict(grid=grid, pad=pad)
  size = (draw(st.integers(1, height + 1)), draw(st.integers(1, width + 1)))
  stride = draw(st.none() | st.tuples(st.integers(1, 4), st.integers(1, 4)))
  if kind == "both":
    return dict(grid=grid, size=size, pad=pad)
  return dict(size=size, stride=stride, pad=pad)


@st.composite
def images(draw):
  """`(seed, shape, dtype, nan)` of an image `(..., H, W, C)`; sometimes of rank < 3."""
  image = (draw(st.integers(1, 9)), draw(st.integers(1, 9)))
  channels = draw(st.integers(1, 3))
  shape = draw(lead_shapes) + image + (channels,)
  if draw(rarely):  # rank 1 or 2: not an image
    shape = shape[-draw(st.integers(1, 2)):]
  return draw(st.integers(0, 2**16)), shape, draw(dtypes), draw(rarely)


def image_problems(shape, dtype, name="x") -> set:
  return {name} if (not is_float(dtype) or len(shape) < 3) else set()


# --- the pure functions ----------------------------------------------------------------

@FUZZ
@hypothesis.given(images(), st.data())
def _partition_property(spec, data):
  seed, shape, dtype, nan = spec
  x = make_array(seed, shape, dtype, nan)
  image = shape[-3:-1] if len(shape) >= 3 else (1, 1)
  kw = data.draw(layouts(image))
  problems = image_problems(shape, dtype) or layout_problems(image, **kw)
  out = run_case("partition", problems, lambda: ra.partition(x, **kw))
  if out is None:
    return
  n, region = expected_layout(image, **kw)
  got = check_output(out, shape[:-3] + (n,) + region + shape[-1:], finite=not nan)
  if "grid" in kw:  # A grid partition moves every pixel once and adds zero padding.
    padding = np.zeros(got.size - x.size, np.float32)
    np.testing.assert_array_equal(
        np.sort(got.ravel()),
        np.sort(np.concatenate([np.asarray(x, np.float32).ravel(), padding])))


@FUZZ
@hypothesis.given(st.integers(0, 2**16), lead_shapes, dtypes, st.data())
def _unpartition_property(seed, lead, dtype, data):
  image = (data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9)))
  kw = data.draw(layouts(image))
  give_image = not data.draw(rarely)
  valid_layout = not layout_problems(image, **kw)
  n, region = expected_layout(image, **kw) if valid_layout else (4, (2, 2))
  if data.draw(rarely):  # a wrong region count
    n, region = n + 1, region
  regions = make_array(seed, lead + (n,) + region + (2,), dtype)
  needs_image = "size" in kw or kw.get("pad")
  if give_image:
    problems = layout_problems(image, **kw)
  elif needs_image:
    problems = {"image_shape"} | ({"grid", "size"} if "grid" in kw and "size" in kw else set())
  else:
    # Without image_shape a grid defines it: (gh * h, gw * w).
    problems = {"grid"} if pair_problem(kw["grid"]) else set()
    if not problems:
      image = tuple(g * r for g, r in zip(as_pair(kw["grid"]), region))
  if not problems and (n, region) != expected_layout(image, **kw):
    problems = {"regions"}
  if not is_float(dtype):
    problems = {"regions"}
  call_kw = dict(kw, image_shape=image) if give_image else kw
  out = run_case("unpartition", problems, lambda: ra.unpartition(regions, **call_kw))
  if out is not None:
    check_output(out, lead + image + (2,), finite=True)


masks = st.sampled_from(["none", "full", "broadcast"] * 3 + ["wrong", "int", "more_axes"])


def make_mask(seed, kind, shape):
  """A mask for `(..., N)` scores of `shape`, valid or not as `kind` says."""
  rng = np.random.default_rng(seed + 1)
  if kind == "none":
    return None
  if kind == "full":
    return rng.random(shape) < 0.7
  if kind == "broadcast":
    return rng.random(shape[-1:]) < 0.7
  if kind == "wrong":
    return rng.random(shape[:-1] + (shape[-1] + 1,)) < 0.7
  if kind == "int":
    return (rng.random(shape) < 0.7).astype(np.int32)
  return rng.random((2,) + shape) < 0.7


def mask_problem(kind) -> set:
  return {"mask"} if kind in ("wrong", "int", "more_axes") else set()


def check_weights(weights, kind, mask, scores_finite: bool):
  """Weights are a distribution over the valid regions (softmax, sparsemax)."""
  valid = np.ones(weights.shape, bool) if mask is None else np.broadcast_to(mask, weights.shape)
  assert (weights[~valid] == 0).all(), "a masked region got a nonzero weight"
  if not scores_finite:
    return
  if kind in ("softmax", "sparsemax"):
    totals = weights.sum(-1)
    expected = valid.any(-1).astype(np.float32)
    np.testing.assert_allclose(totals, expected, atol=2e-2)
    assert (weights >= 0).all()
  if kind == "sigmoid":
    assert ((weights >= 0) & (weights <= 1)).all()


@FUZZ
@hypothesis.given(st.integers(0, 2**16), lead_shapes, st.sampled_from([1, 2, 3, 5, 7, 0]), dtypes,
                  st.sampled_from(["softmax", "sigmoid", "sparsemax", "none"] * 3 + ["softmaxx"]),
                  masks, st.sampled_from([1.0, 0.5, 3, "array"] * 3 + [0.0, -1.0]), st.booleans())
def _normalize_property(seed, lead, n, dtype, kind, mask_kind, temperature, nan):
  shape = lead + (n,) if n else ()  # n = 0: scores of rank 0, which have no region axis
  scores = make_array(seed, shape, dtype, nan and n > 0)
  has_axis = n > 0
  mask = make_mask(seed, mask_kind, shape) if has_axis else None
  if temperature == "array":
    temperature = jnp.float32(2.0)
  problems = set()
  if not is_float(dtype) or not has_axis:
    problems.add("scores")
  if kind == "softmaxx":
    problems.add("kind")
  if has_axis:
    problems |= mask_problem(mask_kind)
  if isinstance(temperature, (int, float)) and temperature <= 0:
    problems.add("temperature")
  out = run_case("normalize", problems,
                 lambda: ra.normalize(scores, kind, mask=mask, temperature=temperature))
  if out is not None:
    weights = check_output(out, shape, finite=not nan, what="weights")
    check_weights(weights, kind, mask, scores_finite=not nan)


@FUZZ
@hypothesis.given(st.integers(0, 2**16), lead_shapes, lead_shapes, st.integers(1, 5),
                  offsets, dtypes, dtypes, st.booleans())
def _weight_property(seed, lead_regions, lead_weights, n, n_offset, regions_dtype,
                     weights_dtype, short_regions):
  region_shape = lead_regions + (n, 2, 3, 2)
  if short_regions:
    region_shape = region_shape[-3:]
  regions = make_array(seed, region_shape, regions_dtype)
  weights = make_array(seed + 1, lead_weights + (max(n + n_offset, 1),), weights_dtype)
  problems = set()
  if not is_float(regions_dtype) or short_regions:
    problems.add("regions")
  if not is_float(weights_dtype):
    problems.add("weights")
  if not problems and weights.shape[-1] != n:
    problems.add("weights")
  if not problems:
    try:
      lead = np.broadcast_shapes(lead_regions, lead_weights)
    except ValueError:
      problems |= {"weights", "regions"}
  out = run_case("weight", problems, lambda: ra.weight(regions, weights))
  if out is not None:
    got = check_output(out, lead + (n, 2, 3, 2), finite=True)
    expected = (np.asarray(regions, np.float64)
                * np.asarray(weights, np.float64)[..., None, None, None])
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=2e-2)


@FUZZ
@hypothesis.given(st.integers(0, 2**16), lead_shapes, st.integers(1, 5), dtypes,
                  st.sampled_from(["sum", "mean", "reassemble", "max"]), st.booleans())
def _aggregate_property(seed, lead, n, dtype, mode, nan):
  weighted = make_array(seed, lead + (n, 2, 3, 2), dtype, nan)
  problems = image_problems(weighted.shape, dtype, "weighted")
  if mode == "max":
    problems.add("mode")
  grid = (n, 1)
  layout_kw = dict(grid=grid) if mode == "reassemble" else {}
  out = run_case("aggregate", problems, lambda: ra.aggregate(weighted, mode, **layout_kw))
  if out is None:
    return
  if mode == "reassemble":
    check_output(out, lead + (2 * n, 3, 2), finite=not nan)
    return
  got = check_output(out, lead + (2, 3, 2), finite=not nan)
  expected = np.asarray(weighted, np.float64).sum(-4) / (n if mode == "mean" else 1)
  if not nan:
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=5e-2)


def score_mean(regions):
  return regions.mean(axis=(-3, -2, -1))


def score_wrong_shape(regions):
  return regions.mean(axis=(-2, -1))


SCORE_FNS = {"mean": score_mean, "wrong_shape": score_wrong_shape,
             "float": lambda regions: 1.0}


@FUZZ
@hypothesis.given(images(), st.data(), st.sampled_from(["mean"] * 8 + list(SCORE_FNS)),
                  st.sampled_from(["softmax", "sigmoid", "sparsemax", "none"] * 3 + ["bad"]),
                  st.sampled_from(["sum", "mean", "reassemble"] * 3 + ["bad"]), masks)
def _region_attention_property(spec, data, score_name, kind, mode, mask_kind):
  seed, shape, dtype, nan = spec
  x = make_array(seed, shape, dtype, nan)
  image = shape[-3:-1] if len(shape) >= 3 else (1, 1)
  kw = data.draw(layouts(image))
  problems = image_problems(shape, dtype) | ({"normalize"} if kind == "bad" else set()) | (
      {"aggregate"} if mode == "bad" else set())
  problems = problems or layout_problems(image, **kw)
  n, region = (1, (1, 1)) if problems else expected_layout(image, **kw)
  scores_shape = shape[:-3] + (n,)
  mask = make_mask(seed, mask_kind, scores_shape)
  if not problems:
    problems = ({"score_fn"} if score_name != "mean" else set()) | mask_problem(mask_kind)
  out = run_case("region_attention", problems, lambda: ra.region_attention(
      x, SCORE_FNS[score_name], normalize=kind, aggregate=mode, mask=mask, **kw))
  if out is None:
    return
  y, weights = out
  y_shape = shape if mode == "reassemble" else shape[:-3] + region + shape[-1:]
  check_output(y, y_shape, finite=not nan)
  weights = check_output(weights, scores_shape, finite=not nan, what="weights")
  valid = np.ones(scores_shape, bool) if mask is None else np.broadcast_to(mask, scores_shape)
  check_weights(weights, kind, valid & regions_with_pixels(image, **kw), scores_finite=not nan)


@FUZZ
@hypothesis.given(st.integers(0, 2**16), lead_shapes, dtypes, offsets, st.data())
def _attention_map_property(seed, lead, dtype, n_offset, data):
  image = (data.draw(st.integers(1, 9)), data.draw(st.integers(1, 9)))
  kw = data.draw(layouts(image))
  problems = layout_problems(image, **kw)
  n = expected_layout(image, **kw)[0] if not problems else 4
  weights = make_array(seed, lead + (max(n + n_offset, 1),), dtype)
  if not is_float(dtype):
    problems = {"weights"}
  elif not problems and weights.shape[-1] != n:
    problems = {"weights"}
  out = run_case("attention_map", problems,
                 lambda: ra.attention_map(weights, image_shape=image, **kw))
  if out is None:
    return
  got = check_output(out, lead + image, finite=True)
  if "grid" in kw and not kw["pad"]:  # each pixel holds its region's weight
    (gh, gw), (h, w) = as_pair(kw["grid"]), (image[0] // as_pair(kw["grid"])[0],
                                              image[1] // as_pair(kw["grid"])[1])
    rows, cols = np.meshgrid(np.arange(image[0]), np.arange(image[1]), indexing="ij")
    expected = np.asarray(weights, np.float32)[..., (rows // h) * gw + cols // w]
    np.testing.assert_array_equal(got, expected)


@FUZZ
@hypothesis.given(st.one_of(st.tuples(st.integers(1, 9), st.integers(1, 9)),
                            st.tuples(st.integers(1, 9), st.integers(1, 9)),
                            st.sampled_from([(0, 3), (3, -1), (2.5, 3), (3, 3, 1), 7])),
                  st.data())
def _layout_mask_boxes_property(image, data):
  valid_image = not (isinstance(image, int) or pair_problem(image))
  kw = data.draw(layouts(image if valid_image else (3, 3)))
  problems = layout_problems(image, **kw) if valid_image else {"image_shape"}
  out = run_case("region_mask/boxes", problems,
                 lambda: (ra.region_mask(image, **kw), ra.region_boxes(image, **kw)))
  if out is None:
    return
  mask, boxes = out
  n, region = expected_layout(image, **kw)
  assert mask.shape == (n,) + region and mask.dtype == bool
  assert boxes.shape == (n, 4)
  areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
  np.testing.assert_array_equal(areas, mask.sum(axis=(1, 2)))
  assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= image[0]).all() and (
      boxes[:, 3] <= image[1]).all()
  if "grid" in kw:  # a grid covers every pixel once
    assert mask.sum() == image[0] * image[1]


PURE_PROPERTIES = {
    "partition": _partition_property,
    "unpartition": _unpartition_property,
    "normalize": _normalize_property,
    "weight": _weight_property,
    "aggregate": _aggregate_property,
    "region_attention": _region_attention_property,
    "attention_map": _attention_map_property,
    "region_mask/boxes": _layout_mask_boxes_property,
}


@pytest.mark.parametrize("target", list(PURE_PROPERTIES))
def test_fuzz_pure_function(target):
  before = FUZZ_COUNTS[target, "ok"], FUZZ_COUNTS[target, "error"]
  PURE_PROPERTIES[target]()
  ok, errors = (FUZZ_COUNTS[target, "ok"] - before[0], FUZZ_COUNTS[target, "error"] - before[1])
  # Both sides of the contract were exercised, not only the error paths.
  assert ok >= EXAMPLES // 10 and errors >= EXAMPLES // 10, (ok, errors)


# --- the Flax modules ----------------------------------------------------------------

SCORERS = {
    "MLPScorer": lambda: ra_nn.MLPScorer(hidden=(4,)),
    "GatedScorer": lambda: ra_nn.GatedScorer(hidden=4),
    "ConvScorer": lambda: ra_nn.ConvScorer(features=(2,)),
    "RecurrentScorer": lambda: ra_nn.RecurrentScorer(hidden=4, bidirectional=True),
    "SelfAttentionScorer": lambda: ra_nn.SelfAttentionScorer(embed_dim=4, num_heads=2),
}
CHANNEL_MODULES = ("SqueezeExcite", "EfficientChannelAttention", "SpatialAttention", "CBAM",
                   "CoordinateAttention")
MULTISCALE_GRIDS = [((1, 1), (2, 2)), ((1, 1),), ((2, 1), (4, 2)), ((2, 2), (3, 3))]


MODULES = ("RegionAttention", "MultiScaleRegionAttention", "AttentionPooling", *SCORERS,
           *CHANNEL_MODULES)
MODULE_EXAMPLES = max(EXAMPLES // 8, 5)  # per module: init + apply costs ~0.3 s a case


@st.composite
def module_cases(draw, name):
  """`(make_module, x, problems, expected_shape_or_None[, call_kwargs])` of one call of
  `name`."""
  seed, shape, dtype, nan = draw(images())
  x = make_array(seed, shape, dtype, nan)
  problems = image_problems(shape, dtype)
  lead, image, channels = shape[:-3], shape[-3:-1], shape[-1]
  if name == "RegionAttention":
    kw = draw(layouts(image if len(shape) >= 3 else (1, 1)))
    normalize = draw(st.sampled_from(["softmax", "sigmoid", "sparsemax", "none"]))
    mode = draw(st.sampled_from(["sum", "mean", "reassemble"]))
    module = functools.partial(ra_nn.RegionAttention, normalize=normalize, aggregate=mode, **kw)
    problems = problems or layout_problems(image, **kw)
    if problems:
      return module, x, problems, None
    _, region = expected_layout(image, **kw)
    return module, x, problems, (shape if mode == "reassemble"
                                       else lead + region + (channels,))
  if name == "MultiScaleRegionAttention":
    grids = draw(st.sampled_from(MULTISCALE_GRIDS))
    if len(shape) >= 3 and not draw(rarely):  # an image the finest grid divides
      image = tuple(max(g[axis] for g in grids) * draw(st.integers(1, 2)) for axis in (0, 1))
      shape = lead + image + (channels,)
      x = make_array(seed, shape, dtype, nan)
    mode = draw(st.sampled_from(["parallel", "coarse_to_fine"] * 3 + ["sideways"]))
    module = functools.partial(
        ra_nn.MultiScaleRegionAttention,
        grids=grids, mode=mode, scorer=functools.partial(ra_nn.MLPScorer, hidden=(4,)))
    problems = problems | ({"mode"} if mode == "sideways" else set())
    for grid in grids:
      problems = problems or layout_problems(image, grid=grid)
    if not problems and mode == "coarse_to_fine" and any(
        f % c for coarse, fine in zip(grids, grids[1:]) for c, f in zip(coarse, fine)):
      problems = {"grid"}
    if problems:
      return module, x, problems, None
    _, region = expected_layout(image, grid=grids[-1])
    return module, x, problems, (shape if mode == "parallel"
                                       else lead + region + (channels,))
  if name == "AttentionPooling":
    kind = draw(st.sampled_from(["attention", "gated", "mean", "max"] * 2 + ["min"]))
    h = x.reshape(shape[:-3] + (shape[-3] * shape[-2], shape[-1])) if len(shape) >= 3 else x
    mask_kind = draw(masks)
    mask = make_mask(seed, mask_kind, h.shape[:-1]) if h.ndim >= 2 else None
    problems = ({"h"} if not is_float(dtype) or h.ndim < 2 else set()) | (
        {"kind"} if kind == "min" else set())
    problems = problems or mask_problem(mask_kind)
    module = functools.partial(ra_nn.AttentionPooling, kind=kind, hidden=4)
    return module, h, problems, h.shape[:-2] + h.shape[-1:], dict(mask=mask)
  if name in SCORERS:
    regions = x[..., None, :, :, :] if len(shape) >= 3 else x  # one region per image
    problems = {"regions"} if problems else set()
    return SCORERS[name], regions, problems, shape[:-3] + (1,)
  # Channel and spatial attention keep the shape of x.
  reduction = draw(st.sampled_from(divisors(channels) * 3 + [2, 3]))  # mostly dividing C
  kernel_size = draw(st.sampled_from([3, 3, 3, 2]))
  module = {
      "SqueezeExcite": lambda: ra_nn.SqueezeExcite(reduction=reduction),
      "EfficientChannelAttention": lambda: ra_nn.EfficientChannelAttention(kernel_size),
      "SpatialAttention": lambda: ra_nn.SpatialAttention(kernel_size=3),
      "CBAM": lambda: ra_nn.CBAM(reduction=reduction, kernel_size=3),
      "CoordinateAttention": lambda: ra_nn.CoordinateAttention(reduction=reduction, min_hidden=2),
  }[name]
  if not problems and name in ("SqueezeExcite", "CBAM") and channels % reduction:
    problems = {"reduction"}
  if not problems and name == "EfficientChannelAttention" and kernel_size % 2 == 0:
    problems = {"kernel_size"}
  return module, x, problems, shape


def apply_module(make_module, x, kwargs):
  """Builds the module, then `init` and `apply` (inference mode): attributes are checked
  at construction."""
  module = make_module()
  variables = module.init(jax.random.PRNGKey(0), x, **kwargs)
  return module.apply(variables, x, **kwargs)


@pytest.mark.parametrize("name", MODULES)
def test_fuzz_module(name):
  @hypothesis.settings(FUZZ, max_examples=MODULE_EXAMPLES)
  @hypothesis.given(module_cases(name))
  def module_property(case):
    module, x, problems, shape, *kwargs = case
    out = run_case(name, problems, lambda: apply_module(module, x, *kwargs or [{}]))
    if out is not None:
      check_output(out, shape, finite=np.isfinite(np.asarray(x, np.float32)).all())

  module_property()
  assert FUZZ_COUNTS[name, "ok"] >= 1, FUZZ_COUNTS  # not only the error paths
