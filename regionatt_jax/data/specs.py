"""What the pipeline knows about each dataset, and how offline datasets are prepared."""

from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import jax
import tensorflow_datasets as tfds
from jax.experimental import multihost_utils

from regionatt_jax import _checks
from regionatt_jax.data import cluttered_digits, digit_bags

# Offline datasets and real ones alike are read through `tfds.data_source`, which needs
# the array_record format.
FILE_FORMAT = "array_record"
_DIGIT_SPLITS = {"train": "train", "validation": "validation", "test": "test"}


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  """Static facts about a dataset, known without building or reading it.

  Attributes:
    name: tfds name, with the config when it has one (`'cluttered_digits/64'`).
    image_shape: `(H, W, C)` of an image; for `digit_bags`, of one instance.
    num_classes: number of (bag) labels.
    has_boxes: whether examples carry a ground-truth `box`.
    splits: `'train'`/`'validation'`/`'test'` -> tfds split string.
    offline: whether `prepare` can build it here without a download.
    max_bag_size: bag length for multiple-instance datasets, else None.
    hflip: whether a left-right flip keeps the label (not for digits).
    vflip: whether an up-down flip keeps the label (aerial and microscope images).
  """

  name: str
  image_shape: tuple[int, int, int]
  num_classes: int
  has_boxes: bool
  splits: Mapping[str, str]
  offline: bool = False
  max_bag_size: int | None = None
  hflip: bool = False
  vflip: bool = False

  @property
  def builder_name(self) -> str:
    """The tfds builder name, without the config."""
    return self.name.split("/")[0]

  @property
  def example_shape(self) -> tuple[int, ...]:
    """`(H, W, C)` of an image, `(max_bag_size, h, w, C)` of a bag: a model's input."""
    bag = (self.max_bag_size,) if self.max_bag_size is not None else ()
    return bag + tuple(self.image_shape)


_REAL = {
    "cifar10": DatasetSpec(
        "cifar10", (32, 32, 3), 10, False,
        {"train": "train[:90%]", "validation": "train[90%:]", "test": "test"},
        hflip=True),
    "eurosat/rgb": DatasetSpec(
        "eurosat/rgb", (64, 64, 3), 10, False,
        # EuroSAT ships one split of 27000 images.
        {"train": "train[:80%]", "validation": "train[80%:90%]", "test": "train[90%:]"},
        hflip=True, vflip=True),
    "patch_camelyon": DatasetSpec(
        "patch_camelyon", (96, 96, 3), 2, False, dict(_DIGIT_SPLITS),
        hflip=True, vflip=True),
}


def _cluttered_spec(config: cluttered_digits.ClutteredDigitsConfig) -> DatasetSpec:
  size = config.canvas_size
  return DatasetSpec(f"cluttered_digits/{config.name}", (size, size, 1), 10, True,
                     dict(_DIGIT_SPLITS), offline=True)


def _bags_spec(config: digit_bags.DigitBagsConfig) -> DatasetSpec:
  side = config.instance_size
  return DatasetSpec(f"digit_bags/{config.name}", (side, side, 1), 2, False,
                     dict(_DIGIT_SPLITS), offline=True, max_bag_size=config.max_bag_size)


_OFFLINE = {
    "cluttered_digits": (cluttered_digits.ClutteredDigits, _cluttered_spec),
    "digit_bags": (digit_bags.DigitBags, _bags_spec),
}


def known_names() -> list[str]:
  """All names `dataset_spec` accepts, configs spelled out."""
  names = [f"{builder}/{config.name}" for builder, (cls, _) in _OFFLINE.items()
           for config in cls.BUILDER_CONFIGS]
  return sorted(names + list(_OFFLINE) + list(_REAL))


def _offline_config(name: str, config: tfds.core.BuilderConfig | None):
  """-> (builder name, BuilderConfig) for an offline dataset name, else None."""
  builder, _, config_name = name.partition("/")
  if builder not in _OFFLINE:
    if config is not None:
      raise ValueError(f"config is only for the offline datasets {sorted(_OFFLINE)}, "
                       f"got config={config.name!r} for name={name!r}")
    return None
  cls, _ = _OFFLINE[builder]
  if config is not None:
    if not isinstance(config, type(cls.BUILDER_CONFIGS[0])):
      raise TypeError(f"config for {builder} must be a "
                      f"{type(cls.BUILDER_CONFIGS[0]).__name__}, got {type(config).__name__}")
    if config_name and config_name != config.name:
      raise ValueError(f"name={name!r} names config {config_name!r} but config.name="
                       f"{config.name!r}; pass the bare name {builder!r} with a config")
    return builder, config
  config_name = config_name or cls.DEFAULT_CONFIG_NAME
  by_name = {c.name: c for c in cls.BUILDER_CONFIGS}
  if config_name not in by_name:
    raise ValueError(f"unknown config {config_name!r} of {builder}; known: "
                     f"{sorted(by_name)}")
  return builder, by_name[config_name]


def dataset_spec(name: str, config: tfds.core.BuilderConfig | None = None) -> DatasetSpec:
  """Returns the static facts of a dataset.

  Args:
    name: a name from `known_names()`, e.g. `'cluttered_digits/128_heavy'`, `'cifar10'`;
      an offline dataset without a config gets its default config.
    config: for the offline datasets, a custom `ClutteredDigitsConfig` /
      `DigitBagsConfig` instead of a registered one (then `name` is the bare builder name).

  Raises:
    ValueError: for an unknown name or config.
  """
  if not isinstance(name, str):
    raise TypeError(f"name must be a str, got {type(name).__name__}")
  offline = _offline_config(name, config)
  if offline is not None:
    builder, builder_config = offline
    return _OFFLINE[builder][1](builder_config)
  if name not in _REAL:
    raise ValueError(f"unknown dataset name {name!r}; known: {known_names()}")
  return _REAL[name]


def builder(name: str, data_dir: str, config: tfds.core.BuilderConfig | None = None
            ) -> tfds.core.DatasetBuilder:
  """The tfds builder of a known dataset, in the array_record format."""
  spec = dataset_spec(name, config)
  offline = _offline_config(name, config)
  kwargs = {"config": offline[1]} if offline is not None else {}
  return tfds.builder(spec.builder_name, data_dir=data_dir, file_format=FILE_FORMAT,
                      **kwargs)


def how_to_prepare(name: str, data_dir: str,
                   config: tfds.core.BuilderConfig | None = None) -> str:
  """A sentence telling a user how to build `name` into `data_dir`."""
  spec = dataset_spec(name, config)
  if spec.offline:
    config_arg = f", config=<the {config.name!r} config>" if config is not None else ""
    return (f"build it with regionatt_jax.data.prepare({name!r}, data_dir={data_dir!r}"
            f"{config_arg}) (offline, seconds)")
  return (f"download and build it once on a machine with internet: "
          f"`pip install 'regionatt_jax[tf]'` then `tfds build {spec.name} "
          f"--data_dir={data_dir} --file_format={FILE_FORMAT}`")


def resolve_data_dir(data_dir: str) -> str:
  """`''` -> `$TFDS_DATA_DIR` or `~/tensorflow_datasets` (tfds's own default)."""
  _checks.path(data_dir, "data_dir", empty=True)
  if data_dir:
    return os.path.expanduser(data_dir)
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def prepare(name: str, data_dir: str, *, config: tfds.core.BuilderConfig | None = None
            ) -> None:
  """Builds an offline dataset into `data_dir`; a no-op when it is already there.

  Building needs neither TensorFlow nor a network. With several processes the main
  one builds first and the others wait for it (on a shared filesystem they then find
  it built; elsewhere each builds its own identical copy).

  Args:
    name: a known dataset name (see `dataset_spec`).
    data_dir: the tfds data directory.
    config: optional custom config of an offline dataset.

  Raises:
    ValueError: for a real dataset that is not prepared in `data_dir` (they need a
      download; the message says how).
  """
  dataset_spec(name, config)
  _checks.path(data_dir, "data_dir")
  if jax.process_count() > 1 and jax.process_index() != 0:
    multihost_utils.sync_global_devices(f"regionatt_jax: {name} prepared")
  _prepare_here(name, data_dir, config)
  if jax.process_count() > 1 and jax.process_index() == 0:
    multihost_utils.sync_global_devices(f"regionatt_jax: {name} prepared")


def _prepare_here(name: str, data_dir: str, config: tfds.core.BuilderConfig | None) -> None:
  spec = dataset_spec(name, config)
  dataset_builder = builder(name, data_dir, config)
  if dataset_builder.is_prepared():
    return
  if not spec.offline:
    raise ValueError(f"dataset {name!r} is not prepared in data_dir={data_dir!r}: "
                     + how_to_prepare(name, data_dir, config))
  dataset_builder.download_and_prepare()
