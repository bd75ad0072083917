"""`digit_bags`: bags of digits for multiple-instance learning.

After the MNIST-bags setup of attention-based deep multiple-instance learning (Ilse,
Tomczak & Welling, 2018), built offline from scikit-learn's 8x8 digits. A bag holds
`N ~ round(Normal(mean_bag_size, std_bag_size))` instances, clipped to
`[1, max_bag_size]`; each instance is a source digit of the split's pool, bilinearly
upscaled to `instance_size` (16 by default: small, so bags stay cheap on CPU). The bag
label says whether the `target_digit` (9) is present. Bag labels are exactly balanced:
even indices are positive, odd negative (the input pipeline shuffles). A positive bag
has `1 + Binomial(N - 1, target_fraction)` target instances at random positions; a
negative bag has none. Bags are padded to `max_bag_size` with zeros and a mask.

Features:
  bag: `(max_bag_size, s, s, 1)` uint8, padding instances all zero.
  mask: `(max_bag_size,)` bool, True for real instances (a prefix).
  label: int64 bag label, 1 when the target digit is present.
  instance_labels: `(max_bag_size,)` int64 digit classes, -1 for padding.
  source_ids: `(max_bag_size,)` int64 sklearn indices, -1 for padding.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from regionatt_jax.data import digits


@dataclasses.dataclass
class DigitBagsConfig(tfds.core.BuilderConfig):
  """Bag size distribution, instance size and split sizes of `digit_bags`.

  Attributes:
    mean_bag_size: mean of the normal the bag size is drawn from.
    std_bag_size: its standard deviation.
    max_bag_size: bags are clipped and padded to this size.
    instance_size: side of a square instance.
    target_digit: the digit whose presence makes a bag positive.
    target_fraction: in positive bags, chance of each further instance being a target.
    num_examples: split name -> number of bags.
    seed: generation seed.
  """

  mean_bag_size: float = 10.0
  std_bag_size: float = 2.0
  max_bag_size: int = 16
  instance_size: int = 16
  target_digit: int = 9
  target_fraction: float = 0.1
  num_examples: dict[str, int] = dataclasses.field(
      default_factory=lambda: {"train": 2000, "validation": 400, "test": 1000})
  seed: int = 0


CONFIGS = [
    DigitBagsConfig(name="16px", description="16x16 instances, 10 +- 2 per bag (default)."),
    DigitBagsConfig(name="28px", description="28x28 instances, 10 +- 2 per bag.",
                    instance_size=28),
    DigitBagsConfig(name="tiny", description="Few small bags: smoke tests.",
                    mean_bag_size=5.0, std_bag_size=1.0, max_bag_size=8,
                    num_examples={"train": 128, "validation": 32, "test": 32}),
]


def _check_config(config: DigitBagsConfig) -> None:
  if config.max_bag_size < 1:
    raise ValueError(f"max_bag_size must be >= 1, got {config.max_bag_size}")
  if not 0 <= config.target_digit <= 9:
    raise ValueError(f"target_digit must be in 0..9, got {config.target_digit}")
  if config.instance_size < 1:
    raise ValueError(f"instance_size must be >= 1, got {config.instance_size}")
  if set(config.num_examples) != set(digits.SPLITS):
    raise ValueError(f"num_examples needs the keys {digits.SPLITS}, "
                     f"got {sorted(config.num_examples)}")


def generate_bag(config: DigitBagsConfig, pool: digits.DigitPool, instances: np.ndarray,
                 split: str, index: int) -> dict[str, np.ndarray | int]:
  """Draws bag `index` of `split`; a pure function of its arguments.

  Args:
    config: the dataset config.
    pool: the split's source digits.
    instances: `(len(pool), s, s)` uint8 upscaled pool images.
    split: split name.
    index: bag index.
  """
  rng = digits.example_rng(config.seed, split, index)
  size = int(np.clip(np.round(rng.normal(config.mean_bag_size, config.std_bag_size)),
                     1, config.max_bag_size))
  positive = index % 2 == 0
  is_target = pool.labels == config.target_digit
  which = rng.choice(np.flatnonzero(~is_target), size=size)
  if positive:
    num_targets = 1 + rng.binomial(size - 1, config.target_fraction)
    slots = rng.choice(size, size=num_targets, replace=False)
    which[slots] = rng.choice(np.flatnonzero(is_target), size=num_targets)
  pad = config.max_bag_size - size
  side = config.instance_size
  return {
      "bag": np.concatenate([instances[which], np.zeros((pad, side, side), np.uint8)]
                            )[..., None],
      "mask": np.arange(config.max_bag_size) < size,
      "label": int(positive),
      "instance_labels": np.pad(pool.labels[which], (0, pad), constant_values=-1),
      "source_ids": np.pad(pool.source_ids[which], (0, pad), constant_values=-1),
  }


class DigitBags(digits.DigitsBuilder):
  """Bags of digits; bag label = target digit present; instance labels kept."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = CONFIGS
  DEFAULT_CONFIG_NAME = "16px"

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    _check_config(config)
    n, s = config.max_bag_size, config.instance_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "bag": tfds.features.Tensor(shape=(n, s, s, 1), dtype=np.uint8,
                                        encoding=tfds.features.Encoding.ZLIB),
            "mask": tfds.features.Tensor(shape=(n,), dtype=np.bool_),
            "label": tfds.features.ClassLabel(num_classes=2),
            "instance_labels": tfds.features.Tensor(shape=(n,), dtype=np.int64),
            "source_ids": tfds.features.Tensor(shape=(n,), dtype=np.int64),
        }),
        supervised_keys=("bag", "label"),
        homepage="https://arxiv.org/abs/1802.04712",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Offline: scikit-learn ships the digits.
    return {split: self._generate_examples(split) for split in digits.SPLITS}

  def _generate_examples(self, split: str):
    config = self.builder_config
    pool = digits.digit_pool(split)
    instances = digits.to_uint8(digits.resize(pool.images, config.instance_size))
    for index in range(config.num_examples[split]):
      yield index, generate_bag(config, pool, instances, split, index)
