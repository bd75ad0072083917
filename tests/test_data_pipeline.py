"""The input pipeline: determinism, host sharding, resumption, augmentation, errors."""

import json

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from regionatt_jax import data
from tests.helpers import TINY_DIGITS_CLEAN

NAME = "cluttered_digits/tiny"


def _iterator(data_dir, **kwargs):
  kwargs = {"global_batch_size": 16, "seed": 0, **kwargs}
  return data.make_iterator(kwargs.pop("name", NAME), kwargs.pop("split", "train"),
                            data_dir=data_dir, **kwargs)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(np.asarray(a[key]), np.asarray(b[key]), err_msg=key)


def _example_keys(batch):
  """One hashable identity per example: its raw pixels and label."""
  pixels = np.round((batch["image"] + 1) * 127.5).astype(np.uint8)
  return [(p.tobytes(), int(l)) for p, l in zip(pixels, batch["label"])]


def _split_keys(data_dir, split="train"):
  source = tfds.data_source(NAME, split=split, data_dir=data_dir)
  return [(np.asarray(source[i]["image"]).tobytes(), int(source[i]["label"]))
          for i in range(len(source))]


def test_batch_shapes_dtypes_and_normalization(data_dir):
  batch = next(_iterator(data_dir, shuffle=False))
  assert batch["image"].shape == (16, 32, 32, 1) and batch["image"].dtype == np.float32
  assert batch["label"].shape == (16,) and batch["label"].dtype == np.int32
  assert batch["box"].shape == (16, 4) and batch["box"].dtype == np.float32
  source = tfds.data_source(NAME, split="train", data_dir=data_dir)
  for i in range(16):  # unshuffled, one host: batch 0 is records 0..15
    raw = np.asarray(source[i]["image"]).astype(np.float64)
    np.testing.assert_allclose(batch["image"][i], raw / 127.5 - 1.0, atol=1e-6)
    np.testing.assert_array_equal(batch["box"][i], source[i]["box"])


def test_same_seed_same_batches_other_seed_other_order(data_dir):
  first = _take(_iterator(data_dir, augment=True), 5)
  for a, b in zip(first, _take(_iterator(data_dir, augment=True), 5)):
    _assert_batches_equal(a, b)
  other = next(_iterator(data_dir, seed=1))
  assert not np.array_equal(other["label"], first[0]["label"])


def test_each_epoch_is_a_new_permutation_of_the_split(data_dir):
  batches = _take(_iterator(data_dir, num_epochs=2, drop_remainder=False), 64)
  keys = [k for b in batches for k in _example_keys(b)]
  split = _split_keys(data_dir)
  first, second = keys[:len(split)], keys[len(split):]
  assert sorted(first) == sorted(split) and sorted(second) == sorted(split)
  assert first != second and first != split


def test_two_hosts_read_disjoint_shards_that_cover_the_epoch(data_dir):
  shards = []
  for host in range(2):
    iterator = _iterator(data_dir, global_batch_size=64, num_epochs=1,
                         drop_remainder=False, process_index=host, process_count=2)
    batches = list(iterator)
    assert all(len(b["label"]) <= 32 for b in batches) and len(batches[0]["label"]) == 32
    shards.append([k for b in batches for k in _example_keys(b)])
  assert not set(shards[0]) & set(shards[1])
  assert sorted(shards[0] + shards[1]) == sorted(_split_keys(data_dir))


def test_hosts_run_the_same_number_of_steps(data_dir):
  # 128 validation examples over 3 hosts: trimmed to 126, 42 each, 5 batches of 8.
  counts = [len(list(_iterator(data_dir, split="validation", global_batch_size=24,
                               num_epochs=1, process_index=host, process_count=3)))
            for host in range(3)]
  assert counts == [5, 5, 5]


@pytest.mark.parametrize("augment", [False, True])
def test_restored_iterator_continues_exactly(data_dir, augment):
  uninterrupted = _iterator(data_dir, augment=augment)
  expected = _take(uninterrupted, 40)  # 40 batches of 16 > one epoch of 512
  interrupted = _iterator(data_dir, augment=augment)
  _take(interrupted, 7)
  state = json.loads(json.dumps(interrupted.get_state()))
  resumed = _iterator(data_dir, augment=augment)
  resumed.set_state(state)
  for want, got in zip(expected[7:], _take(resumed, 33)):
    _assert_batches_equal(want, got)


def test_prefetch_to_device_keeps_batches_and_resumes(data_dir):
  expected = _take(_iterator(data_dir), 6)
  sharding = jax.sharding.NamedSharding(jax.sharding.Mesh(jax.devices(), ("data",)),
                                        jax.sharding.PartitionSpec("data"))
  device_iterator = data.prefetch_to_device(_iterator(data_dir), size=3, sharding=sharding)
  got = _take(device_iterator, 2)
  assert isinstance(got[0]["image"], jax.Array)
  state = device_iterator.get_state()  # two batches taken, more are in flight
  resumed = data.prefetch_to_device(_iterator(data_dir), size=3)
  resumed.set_state(state)
  for want, batch in zip(expected, got + _take(resumed, 4)):
    _assert_batches_equal(want, batch)


def _reference_augment(image, dy, dx, pad, flip_x, flip_y):
  """Shift by (pad - dy, pad - dx) with zero fill, then flip; a plain pixel loop."""
  height, width = image.shape[:2]
  out = np.zeros_like(image)
  for y in range(height):
    for x in range(width):
      src_y, src_x = y - (pad - dy), x - (pad - dx)
      if 0 <= src_y < height and 0 <= src_x < width:
        out[y, x] = image[src_y, src_x]
  if flip_x:
    out = out[:, ::-1]
  if flip_y:
    out = out[::-1]
  return out


@pytest.mark.parametrize("seed", range(12))
def test_augment_moves_the_box_with_the_image(seed):
  rng = np.random.default_rng(100 + seed)
  height, width, pad = 20, 24, 5
  y0, x0 = rng.integers(0, [height - 2, width - 2])
  y1, x1 = rng.integers([y0 + 1, x0 + 1], [height + 1, width + 1])
  image = np.zeros((height, width, 2), np.uint8)
  image[y0:y1, x0:x1] = rng.integers(1, 256, size=(y1 - y0, x1 - x0, 2))
  example = {"image": image, "box": np.array([y0, x0, y1, x1], np.float32), "label": 3}
  out = data.augment_example(example, np.random.default_rng(seed), pad=pad,
                             hflip=True, vflip=True)
  # Replay the draws the function made from the same generator.
  draws = np.random.default_rng(seed)
  dy, dx = draws.integers(0, 2 * pad + 1, size=2)
  flip_x, flip_y = draws.random() < 0.5, draws.random() < 0.5
  np.testing.assert_array_equal(
      out["image"], _reference_augment(image, dy, dx, pad, flip_x, flip_y))
  nonzero = np.argwhere(out["image"].any(axis=-1))
  if len(nonzero):  # the box is the visible rectangle's extent
    want = [*nonzero.min(axis=0), *(nonzero.max(axis=0) + 1)]
    np.testing.assert_array_equal(out["box"], np.array(want, np.float32))
  assert out["label"] == 3


def test_augmented_digit_stays_in_its_box(data_dir):
  iterator = data.make_iterator("cluttered_digits", "train", data_dir=data_dir,
                                global_batch_size=64, seed=3, augment=True,
                                config=TINY_DIGITS_CLEAN)
  for batch in _take(iterator, 4):
    for image, box in zip(batch["image"][..., 0] > -1, batch["box"].astype(int)):
      inside = np.zeros_like(image)
      inside[box[0]:box[2], box[1]:box[3]] = True
      assert not image[~inside].any()


def test_digit_bags_batches(data_dir):
  batch = next(_iterator(data_dir, name="digit_bags/tiny", global_batch_size=8))
  assert batch["image"].shape == (8, 8, 16, 16, 1) and batch["image"].dtype == np.float32
  assert batch["mask"].shape == (8, 8) and batch["mask"].dtype == bool
  assert batch["instance_labels"].dtype == np.int32 and batch["label"].dtype == np.int32
  assert np.all(batch["image"][~batch["mask"]] == -1.0)  # padding is black


@pytest.mark.parametrize("name", ["cifar10", "eurosat/rgb", "patch_camelyon"])
@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_real_datasets_through_the_same_pipeline(tmp_path, name, split):
  spec = data.dataset_spec(name)
  with tfds.testing.mock_data(num_examples=16):
    info = tfds.builder(name).info
    batch = next(data.make_iterator(name, split, data_dir=str(tmp_path),
                                    global_batch_size=8, seed=0, augment=True))
  # The spec's constants against tfds's own metadata.
  assert spec.image_shape == info.features["image"].shape
  assert spec.num_classes == info.features["label"].num_classes
  assert batch["image"].shape == (8, *spec.image_shape)
  assert batch["image"].min() >= -1 and batch["image"].max() <= 1
  assert set(batch) == {"image", "label"} and batch["label"].max() < spec.num_classes


@pytest.mark.parametrize("kwargs, needle", [
    ({"name": "mnist_typo"}, "unknown dataset name 'mnist_typo'"),
    ({"name": "cluttered_digits/32"}, "unknown config '32'"),
    ({"split": "val"}, "split must be one of"),
    ({"global_batch_size": 15, "process_count": 2}, "global_batch_size=15 must be divisible"),
    ({"global_batch_size": 0}, "global_batch_size must be a positive int"),
    ({"process_index": 2, "process_count": 2}, "process_index must be in"),
    ({"seed": None}, "seed must be a non-negative int, got None"),
    ({"name": "digit_bags/tiny", "augment": True}, "augment=True is not supported"),
])
def test_bad_arguments_are_clear_errors(data_dir, kwargs, needle):
  with pytest.raises((ValueError, TypeError), match=needle):
    _iterator(data_dir, **kwargs)


def test_missing_dataset_says_how_to_prepare(tmp_path):
  with pytest.raises(ValueError, match=r"not prepared.*data\.prepare\('cluttered_digits/64'"):
    data.make_iterator("cluttered_digits/64", "train", data_dir=str(tmp_path),
                       global_batch_size=8, seed=0)
  with pytest.raises(ValueError, match="not prepared.*tfds build cifar10"):
    data.make_iterator("cifar10", "train", data_dir=str(tmp_path), global_batch_size=8,
                       seed=0)
  with pytest.raises(ValueError, match="tfds build patch_camelyon"):
    data.prepare("patch_camelyon", str(tmp_path))


def test_padded_batches_hold_every_example_once_and_mask_the_padding(data_dir):
  """Test split of 128 in batches of 48: 48, 48, 32 real + 16 padding, all one shape."""
  batches = list(data.padded_batches(NAME, "test", data_dir=data_dir, global_batch_size=48))
  assert [b["image"].shape for b in batches] == [(48, 32, 32, 1)] * 3
  assert [int(b["example_mask"].sum()) for b in batches] == [48, 48, 32]
  real = [key for b in batches
          for key, valid in zip(_example_keys(b), b["example_mask"]) if valid]
  assert real == _split_keys(data_dir, "test")
  padding = batches[-1]
  assert not padding["example_mask"][32:].any()
  assert (padding["image"][32:] == 0).all() and (padding["label"][32:] == 0).all()
