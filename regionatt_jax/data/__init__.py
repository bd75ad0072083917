"""Offline tfds datasets with ground-truth locations, and deterministic input pipelines.

Importing this package registers the offline tfds builders `cluttered_digits` (one
digit on a cluttered canvas, with its box) and `digit_bags` (multiple-instance bags of
digits); both build from scikit-learn's bundled digits, offline, without TensorFlow.

Usage::

  from regionatt_jax import data
  spec = data.dataset_spec("cluttered_digits/64")
  # DatasetSpec(name, image_shape=(H, W, C), num_classes, has_boxes, splits, ...)
  data.prepare("cluttered_digits/64", data_dir)      # no-op when already built
  it = data.make_iterator("cluttered_digits/64", "train", data_dir=data_dir,
                          global_batch_size=128, seed=0, augment=True)
  batch = next(it)    # {'image': (B, H, W, C) float32 in [-1, 1], 'label': (B,) int32,
                      #  'box': (B, 4) float32 (y0, x0, y1, x1), y1/x1 exclusive}
  state = it.get_state()      # small JSON-able dict; it.set_state(state) resumes
  device_it = data.prefetch_to_device(it, size=2, sharding=sharding)
  for batch in data.padded_batches("cluttered_digits/64", "test", data_dir=data_dir,
                                   global_batch_size=256):
    ...               # one pass, every batch padded; batch['example_mask'] marks real ones

Datasets (`data.known_names()`): `cluttered_digits/{64,64_clean,64_heavy,128,
128_clean,128_heavy,tiny}`, `digit_bags/{16px,28px,tiny}` (offline) and `cifar10`,
`eurosat/rgb`, `patch_camelyon` (downloaded by the user once; see `data.prepare`).
Images are normalized as `uint8 / 127.5 - 1`, in [-1, 1]. Per-host batch is
`global_batch_size // process_count`; each host reads a disjoint shard. Bag datasets
yield their bags under `'image'` too (`(B, max_bag, h, w, C)`, with `'mask'`), so a
training step reads the same keys from both.
"""

from regionatt_jax.data.cluttered_digits import ClutteredDigits, ClutteredDigitsConfig
from regionatt_jax.data.digit_bags import DigitBags, DigitBagsConfig
from regionatt_jax.data.pipeline import (augment_example, host_batch_size, make_dataset,
                                         make_iterator, normalize_images, padded_batches,
                                         prefetch_to_device)
from regionatt_jax.data.specs import (DatasetSpec, dataset_spec, known_names, prepare,
                                      resolve_data_dir)

__all__ = [
    "ClutteredDigits", "ClutteredDigitsConfig", "DatasetSpec", "DigitBags",
    "DigitBagsConfig", "augment_example", "dataset_spec", "host_batch_size",
    "known_names", "make_dataset", "make_iterator", "normalize_images", "padded_batches",
    "prefetch_to_device", "prepare", "resolve_data_dir",
]
