"""The offline tfds datasets: contents, ground truth, splits, determinism."""

import dataclasses
import pathlib
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn import datasets as sk_datasets

from regionatt_jax import data
from regionatt_jax.data import cluttered_digits, digit_bags, digits
from tests.helpers import TINY_BAGS, TINY_DIGITS, TINY_DIGITS_CLEAN

SPLITS = ("train", "validation", "test")
SKLEARN_LABELS = sk_datasets.load_digits().target


def _records(name, split, data_dir, config=None):
  """All examples of a split as a dict of stacked numpy arrays, in file order."""
  kwargs = {"builder_kwargs": {"config": config}} if config is not None else {}
  source = tfds.data_source(name, split=split, data_dir=data_dir, **kwargs)
  examples = [source[i] for i in range(len(source))]
  return {key: np.stack([np.asarray(e[key]) for e in examples]) for key in examples[0]}


def _digits(split, data_dir, config=None):
  return _records("cluttered_digits" if config else "cluttered_digits/tiny", split,
                  data_dir, config)


def test_builds_and_reads_without_tensorflow(tmp_path):
  script = textwrap.dedent(f"""
      import sys
      from regionatt_jax import data
      import tensorflow_datasets as tfds
      data.prepare("digit_bags/tiny", {str(tmp_path)!r})
      example = tfds.data_source("digit_bags/tiny", split="test", data_dir={str(tmp_path)!r})[0]
      assert example["bag"].shape == (8, 16, 16, 1), example["bag"].shape
      loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "torch"))
      assert not loaded, loaded
  """)
  subprocess.run([sys.executable, "-c", script], check=True,
                 cwd=pathlib.Path(__file__).parents[1], timeout=300)


@pytest.mark.parametrize("split", SPLITS)
def test_cluttered_digits_shapes_and_dtypes(data_dir, split):
  records = _digits(split, data_dir)
  n = TINY_DIGITS.num_examples[split]
  assert records["image"].shape == (n, 32, 32, 1) and records["image"].dtype == np.uint8
  assert records["box"].shape == (n, 4) and records["box"].dtype == np.float32
  assert records["clutter_source_ids"].shape == (n, TINY_DIGITS.num_fragments[1])
  assert set(np.unique(records["label"])) <= set(range(10))
  assert data.dataset_spec("cluttered_digits/tiny").image_shape == (32, 32, 1)


def test_cluttered_digits_labels_are_balanced_and_match_sklearn(data_dir):
  records = _digits("train", data_dir)
  np.testing.assert_array_equal(records["label"], SKLEARN_LABELS[records["source_id"]])
  counts = np.bincount(records["label"], minlength=10)
  expected = len(records["label"]) / 10
  # Binomial(512, 0.1): std ~6.8; 4 std either side.
  assert np.all(np.abs(counts - expected) < 28), counts


def test_cluttered_digit_boxes_are_tight_on_the_clean_canvas(data_dir):
  records = _digits("train", data_dir, TINY_DIGITS_CLEAN)
  lo, hi = TINY_DIGITS.digit_size
  for image, box in zip(records["image"][..., 0], records["box"].astype(int)):
    y0, x0, y1, x1 = box
    assert 0 <= y0 < y1 <= 32 and 0 <= x0 < x1 <= 32
    assert max(y1 - y0, x1 - x0) <= hi
    inside = np.zeros_like(image, bool)
    inside[y0:y1, x0:x1] = True
    assert not image[~inside].any()  # every digit pixel is in the box...
    # ...and every edge of the box touches the digit.
    assert image[y0].any() and image[y1 - 1].any()
    assert image[:, x0].any() and image[:, x1 - 1].any()


def test_clutter_keeps_digit_and_box(data_dir):
  clean = _digits("validation", data_dir, TINY_DIGITS_CLEAN)
  cluttered = _digits("validation", data_dir)
  np.testing.assert_array_equal(cluttered["source_id"], clean["source_id"])
  np.testing.assert_array_equal(cluttered["box"], clean["box"])
  assert np.all(cluttered["image"] >= clean["image"])  # the digit is never erased
  clutter_pixels = (cluttered["image"] > clean["image"]).sum(axis=(1, 2, 3))
  assert np.mean(clutter_pixels > 0) > 0.9


def test_no_source_digit_is_shared_across_splits(data_dir):
  used = {}
  for split in SPLITS:
    digit_records = _digits(split, data_dir)
    bag_records = _records("digit_bags/tiny", split, data_dir)
    ids = np.concatenate([digit_records["source_id"],
                          digit_records["clutter_source_ids"].ravel(),
                          bag_records["source_ids"].ravel()])
    used[split] = set(ids[ids >= 0].tolist())
  assert not used["train"] & used["validation"]
  assert not used["train"] & used["test"]
  assert not used["validation"] & used["test"]


def test_source_pools_partition_all_digits():
  pools = digits.pool_source_ids()
  everything = np.concatenate(list(pools.values()))
  np.testing.assert_array_equal(np.sort(everything), np.arange(len(SKLEARN_LABELS)))
  for ids in pools.values():  # stratified: every class in every pool
    assert set(SKLEARN_LABELS[ids]) == set(range(10))


def test_regeneration_is_bit_identical_and_seeded(data_dir, tmp_path):
  data.prepare("cluttered_digits/tiny", str(tmp_path))
  other_seed = dataclasses.replace(TINY_DIGITS, name="tiny_seed1", seed=1)
  data.prepare("cluttered_digits", str(tmp_path), config=other_seed)
  for split in SPLITS:
    first, again = _digits(split, data_dir), _digits(split, str(tmp_path))
    for key in first:
      np.testing.assert_array_equal(first[key], again[key], err_msg=key)
  assert not np.array_equal(_digits("test", data_dir)["image"],
                            _digits("test", str(tmp_path), other_seed)["image"])


@pytest.mark.parametrize("split", SPLITS)
def test_digit_bags_contents(data_dir, split):
  bags = _records("digit_bags/tiny", split, data_dir)
  n, m = TINY_BAGS.num_examples[split], TINY_BAGS.max_bag_size
  assert bags["bag"].shape == (n, m, 16, 16, 1) and bags["bag"].dtype == np.uint8
  assert bags["mask"].dtype == bool
  sizes = bags["mask"].sum(axis=1)
  assert sizes.min() >= 1 and sizes.max() <= m
  # The mask is a prefix; padding is blank and labelled -1.
  np.testing.assert_array_equal(bags["mask"], np.arange(m) < sizes[:, None])
  assert not bags["bag"][~bags["mask"]].any()
  assert np.all(bags["instance_labels"][~bags["mask"]] == -1)
  valid = bags["mask"]
  np.testing.assert_array_equal(bags["instance_labels"][valid],
                                SKLEARN_LABELS[bags["source_ids"][valid]])
  has_target = ((bags["instance_labels"] == TINY_BAGS.target_digit) & valid).any(axis=1)
  np.testing.assert_array_equal(bags["label"], has_target.astype(int))
  assert bags["label"].sum() == n // 2  # exactly balanced


def test_digit_bag_sizes_follow_the_normal():
  config = dataclasses.replace(TINY_BAGS, mean_bag_size=10.0, std_bag_size=2.0,
                               max_bag_size=16)
  pool = digits.digit_pool("train")
  instances = digits.to_uint8(digits.resize(pool.images, config.instance_size))
  sizes = np.array([digit_bags.generate_bag(config, pool, instances, "train", i)["mask"].sum()
                    for i in range(2000)])
  assert abs(sizes.mean() - 10.0) < 0.2 and abs(sizes.std() - 2.0) < 0.2


def test_resize_matches_bilinear_reference():
  image = np.random.default_rng(0).random((8, 8)).astype(np.float32)
  # Upscaling by an integer factor with half-pixel centres: output pixel i samples the
  # input at (i + 0.5) / 2 - 0.5, i.e. a 0.75/0.25 blend of neighbours away from edges.
  out = digits.resize(image, 16)
  np.testing.assert_allclose(out[5, 0], 0.75 * image[2, 0] + 0.25 * image[3, 0], rtol=1e-6)
  np.testing.assert_allclose(out[0, 0], image[0, 0], rtol=1e-6)
  np.testing.assert_allclose(digits.resize(image, 8), image, rtol=1e-6)


@pytest.mark.parametrize("field, value, needle", [
    ("digit_size", (8, 40), "digit_size"),
    ("fragment_size", 20, "fragment_size"),
    ("num_examples", {"train": 1}, "num_examples"),
])
def test_bad_config_is_a_clear_error(tmp_path, field, value, needle):
  config = dataclasses.replace(TINY_DIGITS, name="bad", **{field: value})
  with pytest.raises(ValueError, match=needle):
    cluttered_digits.ClutteredDigits(config=config, data_dir=str(tmp_path)).info
