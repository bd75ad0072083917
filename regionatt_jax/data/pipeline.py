"""Input pipelines: a tfds split -> deterministic, host-sharded, resumable numpy batches.

Built on grain's `MapDataset` over `tfds.data_source` (array_record), chosen over
tf.data because (1) every step is a pure function of the element index, so an
iterator's state is one integer and a restored run sees exactly the batches the
uninterrupted one would have, with no replay of skipped batches; (2) it needs no
TensorFlow for the offline datasets; (3) host sharding is a slice of the index space.

Order of operations (each a function of the index only):
  source -> [truncate to a multiple of process_count, when drop_remainder]
  -> host shard `[process_index::process_count]` -> shuffle(seed; reshuffled each epoch)
  -> repeat(num_epochs) -> select/convert features -> augment(seed, index)
  -> batch(global_batch_size // process_count) -> normalize.
"""

from __future__ import annotations

import collections
from typing import Any, Iterator

import grain
import jax
import numpy as np
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from regionatt_jax import _checks
from regionatt_jax.data import specs

Batch = dict[str, np.ndarray]


def normalize_images(images: np.ndarray) -> np.ndarray:
  """uint8 pixels `[0, 255]` -> float32 `[-1, 1]`: `x / 127.5 - 1`."""
  images = _checks.array(images, "images")
  if images.dtype != np.uint8:
    raise TypeError(f"images must be uint8 pixels in [0, 255], got dtype {images.dtype}")
  return images.astype(np.float32) / np.float32(127.5) - np.float32(1.0)


def _select(example: dict[str, Any], spec: specs.DatasetSpec) -> dict[str, np.ndarray]:
  """Keeps the features a model trains on, as arrays of their final dtypes but images."""
  out = {"label": np.asarray(example["label"], np.int32)}
  if spec.max_bag_size is not None:  # A bag is the model's input, as an image is.
    out["image"] = np.asarray(example["bag"])
    out["mask"] = np.asarray(example["mask"], bool)
    out["instance_labels"] = np.asarray(example["instance_labels"], np.int32)
    return out
  out["image"] = np.asarray(example["image"])
  if spec.has_boxes:
    out["box"] = np.asarray(example["box"], np.float32)
  return out


def _shift(image: np.ndarray, dy: int, dx: int) -> np.ndarray:
  """`out[y, x] = image[y - dy, x - dx]`, zero where that falls outside the image.

  The same as zero-padding and cropping, without materializing the padded image.
  """
  height, width = image.shape[:2]
  dy, dx = min(max(dy, -height), height), min(max(dx, -width), width)  # beyond: all zeros
  out = np.zeros_like(image)
  out[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = (
      image[max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)])
  return out


def augment_example(example: dict[str, np.ndarray], rng: np.random.Generator, *,
                    pad: int, hflip: bool, vflip: bool) -> dict[str, np.ndarray]:
  """Random translation (zero-pad by `pad`, crop back) and the allowed flips.

  The box, when present, moves with the image and is clipped to it (a digit pushed
  partly off the canvas keeps the box of its visible part's extent).

  Args:
    example: `'image'` `(H, W, C)` and optionally `'box'` `(4,)` `(y0, x0, y1, x1)`.
    rng: the element's generator.
    pad: maximal shift in pixels along each axis.
    hflip: flip left-right with probability 1/2.
    vflip: flip up-down with probability 1/2.
  """
  _checks.integer(pad, "pad", minimum=0)
  _checks.boolean(hflip, "hflip")
  _checks.boolean(vflip, "vflip")
  image = example["image"]
  height, width = image.shape[:2]
  dy, dx = rng.integers(0, 2 * pad + 1, size=2)
  out = dict(example, image=_shift(image, int(pad - dy), int(pad - dx)))
  box = example.get("box")
  if box is not None:
    shift = np.array([pad - dy, pad - dx] * 2, np.float32)
    box = np.clip(box + shift, 0, np.array([height, width] * 2, np.float32))
  if hflip and rng.random() < 0.5:
    out["image"] = out["image"][:, ::-1]
    if box is not None:
      box = np.array([box[0], width - box[3], box[2], width - box[1]], np.float32)
  if vflip and rng.random() < 0.5:
    out["image"] = out["image"][::-1]
    if box is not None:
      box = np.array([height - box[2], box[1], height - box[0], box[3]], np.float32)
  if box is not None:
    out["box"] = box
  return out


def _normalize_batch(batch: Batch) -> Batch:
  return dict(batch, image=normalize_images(batch["image"]))


def _open_source(name: str, split: str, data_dir: str, config) -> Any:
  """The random-access source of one split; a clear error when it is not prepared."""
  spec = specs.dataset_spec(name, config)
  kwargs = {"builder_kwargs": {"config": config}} if config is not None else {}
  try:
    return tfds.data_source(spec.name if config is None else spec.builder_name,
                            split=spec.splits[split], data_dir=data_dir,
                            download=False, **kwargs)
  except (NotImplementedError, FileNotFoundError, AssertionError) as error:
    if specs.builder(name, data_dir, config).is_prepared():
      raise ValueError(
          f"dataset {name!r} in data_dir={data_dir!r} cannot be read by "
          f"tfds.data_source; it must be prepared with file_format="
          f"{specs.FILE_FORMAT!r}: {error}") from error
    raise ValueError(f"dataset {name!r} is not prepared in data_dir={data_dir!r}: "
                     + specs.how_to_prepare(name, data_dir, config)) from error


def host_batch_size(global_batch_size: int, process_count: int,
                    local_device_count: int) -> int:
  """The per-host batch; raises unless it splits evenly over hosts and their devices."""
  _checks.integer(global_batch_size, "global_batch_size")
  _checks.integer(process_count, "process_count")
  _checks.integer(local_device_count, "local_device_count")
  num_devices = process_count * local_device_count
  if global_batch_size % num_devices:
    raise ValueError(
        f"global_batch_size={global_batch_size} must be divisible by process_count * "
        f"local_device_count = {process_count} * {local_device_count} = {num_devices}")
  return global_batch_size // process_count


def make_dataset(name: str, split: str, *, data_dir: str, global_batch_size: int,
                 seed: int, shuffle: bool = True, augment: bool = False,
                 num_epochs: int | None = None, drop_remainder: bool = True,
                 process_index: int | None = None, process_count: int | None = None,
                 config: tfds.core.BuilderConfig | None = None) -> grain.MapDataset:
  """The pipeline as a grain `MapDataset` of batches; see `make_iterator`."""
  spec = specs.dataset_spec(name, config)
  _checks.choice(split, "split", spec.splits)
  _checks.path(data_dir, "data_dir")
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  batch_size = host_batch_size(global_batch_size, process_count, jax.local_device_count())
  if not 0 <= _checks.integer(process_index, "process_index", minimum=0) < process_count:
    raise ValueError(f"process_index must be in [0, process_count={process_count}), "
                     f"got {process_index}")
  if num_epochs is not None:
    _checks.integer(num_epochs, "num_epochs")
  _checks.integer(seed, "seed", minimum=0)
  for flag, value in (("shuffle", shuffle), ("augment", augment),
                      ("drop_remainder", drop_remainder)):
    _checks.boolean(value, flag)
  if augment and spec.max_bag_size is not None:
    raise ValueError(f"augment=True is not supported for the bag dataset {name!r}")

  dataset = grain.MapDataset.source(_open_source(name, split, data_dir, config))
  if drop_remainder:  # every host then runs the same number of steps
    dataset = dataset[:len(dataset) - len(dataset) % process_count]
  dataset = dataset[process_index::process_count]
  shuffle_seed, augment_seed = np.random.SeedSequence(seed).generate_state(2)
  if shuffle:
    dataset = dataset.shuffle(seed=int(shuffle_seed))
  dataset = dataset.repeat(num_epochs).map(lambda example: _select(example, spec))
  if augment:
    pad = spec.image_shape[0] // 8

    def augment_fn(example, rng):
      return augment_example(example, rng, pad=pad, hflip=spec.hflip, vflip=spec.vflip)

    dataset = dataset.random_map(augment_fn, seed=int(augment_seed))
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  return dataset.map(_normalize_batch)


def make_iterator(name: str, split: str, *, data_dir: str, global_batch_size: int,
                  seed: int, shuffle: bool = True, augment: bool = False,
                  num_epochs: int | None = None, drop_remainder: bool = True,
                  process_index: int | None = None, process_count: int | None = None,
                  config: tfds.core.BuilderConfig | None = None,
                  num_threads: int = 2) -> grain.DatasetIterator:
  """A resumable iterator over batches of this host's shard of a split.

  Args:
    name: a known dataset name, e.g. `'cluttered_digits/64'` (see `dataset_spec`).
    split: `'train'`, `'validation'` or `'test'`.
    data_dir: tfds data directory holding the prepared dataset.
    global_batch_size: batch over all hosts; each host yields
      `global_batch_size // process_count` examples per batch.
    seed: seeds the shuffle and the augmentation; same seed, same batches.
    shuffle: shuffle globally, differently each epoch.
    augment: random translation by up to `H // 8` pixels and the flips the dataset
      allows (none for digits), boxes transformed with the image.
    num_epochs: passes over the split; None repeats forever.
    drop_remainder: drop a last partial batch; also trims the split to a multiple of
      `process_count` so that all hosts run the same number of steps.
    process_index: this host; defaults to `jax.process_index()`.
    process_count: number of hosts; defaults to `jax.process_count()`.
    config: a custom config of an offline dataset (then `name` is the bare builder).
    num_threads: threads reading and transforming elements.

  Returns:
    An iterator of dicts of numpy arrays, `B = global_batch_size // process_count`:
    `'image'` float32 `(B, H, W, C)` in [-1, 1] (`uint8 / 127.5 - 1`), `'label'` int32
    `(B,)`, `'box'` float32 `(B, 4)` when the dataset has boxes; for bag datasets
    `'image'` holds the bags, float32 `(B, max_bag, h, w, C)` in [-1, 1], with `'mask'`
    bool `(B, max_bag)`, `'label'` int32 `(B,)`, `'instance_labels'` int32
    `(B, max_bag)` (-1 = padding).
    `it.get_state()` returns a small JSON-able dict; `it.set_state(state)` resumes there.

  Raises:
    ValueError: unknown name or split, a dataset not prepared in `data_dir` (the
      message says how to prepare it), a batch that does not divide over hosts and
      devices, bad epochs or process index.
  """
  _checks.integer(num_threads, "num_threads")
  dataset = make_dataset(
      name, split, data_dir=data_dir, global_batch_size=global_batch_size, seed=seed,
      shuffle=shuffle, augment=augment, num_epochs=num_epochs,
      drop_remainder=drop_remainder, process_index=process_index,
      process_count=process_count, config=config)
  read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=4)
  return iter(dataset.to_iter_dataset(read_options))


def _pad(batch: Batch, size: int) -> Batch:
  """Pads the leading axis to `size` and adds `'example_mask'` (False on padding)."""
  count = len(batch["label"])
  out = {key: np.concatenate([value, np.zeros((size - count,) + value.shape[1:], value.dtype)])
         for key, value in batch.items()}
  out["example_mask"] = np.arange(size) < count
  return out


def _on_any_process(flag: bool) -> bool:
  """Whether `flag` holds on any process."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def padded_batches(name: str, split: str, *, data_dir: str, global_batch_size: int,
                   seed: int = 0) -> Iterator[Batch]:
  """One pass over this host's shard of `split`, every batch padded to full size.

  For evaluation: no example is dropped or repeated, and every batch has the same
  shape (one compilation). Hosts may hold different numbers of examples; a host that
  has run out yields fully padded batches until every host has, so all hosts run the
  same number of steps.

  Args:
    name, split, data_dir, global_batch_size, seed: as in `make_iterator`.

  Yields:
    `make_iterator`'s batches of `global_batch_size // process_count` examples, plus
    `'example_mask'` bool `(B,)`, False on padding.

  Raises:
    ValueError: as `make_iterator`; also a split with fewer examples than processes.
  """
  iterator = make_iterator(name, split, data_dir=data_dir,
                           global_batch_size=global_batch_size, seed=seed, shuffle=False,
                           num_epochs=1, drop_remainder=False)
  local_size = global_batch_size // jax.process_count()
  template = None
  while True:
    batch = next(iterator, None)
    if not _on_any_process(batch is not None):
      return
    if batch is not None:
      template = template or {key: value[:0] for key, value in batch.items()}
    elif template is None:  # This host's shard was empty from the start.
      raise ValueError(f"split {split!r} of {name!r} has fewer examples than processes")
    yield _pad(batch if batch is not None else template, local_size)


class DevicePrefetchIterator:
  """Keeps `size` batches in flight to the devices; resumable like its source.

  `get_state()` is the source's state just after the batch last returned, so saving
  it with a checkpoint and restoring with `set_state` resumes at the next batch,
  whatever was in flight.
  """

  def __init__(self, iterator: grain.DatasetIterator, size: int,
               sharding: jax.sharding.Sharding | None):
    _checks.integer(size, "size")
    self._iterator = iterator
    self._size = size
    self._sharding = sharding
    self._queue: collections.deque = collections.deque()
    self._state = iterator.get_state()

  def _put(self, batch: Batch):
    if self._sharding is None:
      return jax.device_put(batch)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self._sharding, x), batch)

  def _fill(self) -> None:
    while len(self._queue) < self._size:
      try:
        batch = next(self._iterator)
      except StopIteration:
        return
      self._queue.append((self._put(batch), self._iterator.get_state()))

  def __iter__(self) -> Iterator[Any]:
    return self

  def __next__(self):
    self._fill()
    if not self._queue:
      raise StopIteration
    batch, self._state = self._queue.popleft()
    return batch

  def get_state(self) -> dict[str, Any]:
    return self._state

  def set_state(self, state: dict[str, Any]) -> None:
    self._queue.clear()
    self._iterator.set_state(state)
    self._state = state


def prefetch_to_device(iterator: grain.DatasetIterator, size: int = 2,
                       sharding: jax.sharding.Sharding | None = None
                       ) -> DevicePrefetchIterator:
  """Transfers batches to the devices `size` steps ahead (transfers are asynchronous).

  Args:
    iterator: a `make_iterator` iterator of host-local numpy batches.
    size: number of batches in flight.
    sharding: how to lay a global batch over the devices, e.g.
      `NamedSharding(mesh, P('data'))`; each host's batch becomes its part of a global
      `jax.Array` (`jax.make_array_from_process_local_data`). None puts every batch on
      the default device.

  Returns:
    An iterator of batches of `jax.Array`s with `get_state`/`set_state`.
  """
  return DevicePrefetchIterator(iterator, size, sharding)
