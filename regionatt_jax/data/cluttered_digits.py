"""`cluttered_digits`: one digit at a random place and scale on a cluttered canvas.

After the cluttered MNIST of recurrent models of visual attention (Mnih et al., 2014),
built offline from scikit-learn's bundled 8x8 digits, so it needs no download. Each
example is a `(S, S, 1)` uint8 canvas holding one digit, bilinearly upscaled to a random
side in `digit_size`, placed uniformly at random, over `num_fragments` clutter fragments:
random `fragment_size` square crops of other digits of the same split's source pool, at
random places. Pixels are composited with `max`, so clutter never erases the digit.

Features:
  image: `(S, S, 1)` uint8.
  label: int64 class of the digit, 0..9.
  box: `(4,)` float32 `(y0, x0, y1, x1)` tight box of the digit's non-zero pixels in
    canvas pixels, `y1`/`x1` exclusive (the `regionatt_jax.region_boxes` convention).
  source_id: int64 index of the digit in `sklearn.datasets.load_digits()`.
  clutter_source_ids: `(max(num_fragments),)` int64 sources of the fragments, -1 padded.

Determinism: example `i` of a split is drawn from generators seeded by
`(seed, split, i, stream)` with one stream for the digit and one for the clutter, so
regeneration is bit-identical, and configs differing only in clutter share digits and
boxes. No source digit is shared across splits (see `digits.pool_source_ids`).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from regionatt_jax.data import digits


@dataclasses.dataclass
class ClutteredDigitsConfig(tfds.core.BuilderConfig):
  """Canvas size, digit scale, clutter level and split sizes of `cluttered_digits`.

  Attributes:
    canvas_size: side `S` of the square canvas.
    digit_size: inclusive `(min, max)` side of the upscaled digit.
    num_fragments: inclusive `(min, max)` number of clutter fragments.
    fragment_size: side of a square clutter fragment.
    num_examples: split name -> number of examples.
    seed: generation seed.
  """

  canvas_size: int = 64
  digit_size: tuple[int, int] = (16, 28)
  num_fragments: tuple[int, int] = (6, 10)
  fragment_size: int = 8
  num_examples: dict[str, int] = dataclasses.field(
      default_factory=lambda: {"train": 16000, "validation": 2000, "test": 2000})
  seed: int = 0


def _config(name: str, description: str, **kwargs) -> ClutteredDigitsConfig:
  return ClutteredDigitsConfig(name=name, description=description, **kwargs)


_BIG = {"train": 16000, "validation": 2000, "test": 2000}
CONFIGS = [
    _config("64", "64x64 canvas, 6-10 fragments of 8x8 (default)."),
    _config("64_clean", "64x64 canvas, no clutter.", num_fragments=(0, 0)),
    _config("64_heavy", "64x64 canvas, 16-24 fragments of 10x10.",
            num_fragments=(16, 24), fragment_size=10),
    _config("128", "128x128 canvas, 16-24 fragments of 8x8.", canvas_size=128,
            num_fragments=(16, 24)),
    _config("128_clean", "128x128 canvas, no clutter.", canvas_size=128,
            num_fragments=(0, 0)),
    _config("128_heavy", "128x128 canvas, 40-56 fragments of 10x10.", canvas_size=128,
            num_fragments=(40, 56), fragment_size=10),
    _config("tiny", "32x32 canvas, few examples: smoke tests.", canvas_size=32,
            digit_size=(12, 18), num_fragments=(3, 5), fragment_size=6,
            num_examples={"train": 512, "validation": 128, "test": 128}),
]


def _check_config(config: ClutteredDigitsConfig) -> None:
  lo, hi = config.digit_size
  if not 8 <= lo <= hi <= config.canvas_size:
    raise ValueError(f"digit_size must satisfy 8 <= min <= max <= canvas_size="
                     f"{config.canvas_size}, got {config.digit_size}")
  if not 0 <= config.num_fragments[0] <= config.num_fragments[1]:
    raise ValueError(f"num_fragments must be 0 <= min <= max, got {config.num_fragments}")
  if not 1 <= config.fragment_size <= min(lo, config.canvas_size):
    raise ValueError(f"fragment_size must be in [1, digit_size min={lo}], "
                     f"got {config.fragment_size}")
  if set(config.num_examples) != set(digits.SPLITS):
    raise ValueError(f"num_examples needs the keys {digits.SPLITS}, "
                     f"got {sorted(config.num_examples)}")


class _ScaledPool:
  """A split's source digits upscaled to every side in a range, as uint8."""

  def __init__(self, pool: digits.DigitPool, sizes: range):
    self.pool = pool
    self.by_size = {s: digits.to_uint8(digits.resize(pool.images, s)) for s in sizes}


def _paste_max(canvas: np.ndarray, patch: np.ndarray, y: int, x: int) -> None:
  h, w = patch.shape
  np.maximum(canvas[y:y + h, x:x + w], patch, out=canvas[y:y + h, x:x + w])


def _tight_box(patch: np.ndarray, y: int, x: int) -> np.ndarray:
  rows = np.flatnonzero(patch.any(axis=1))
  cols = np.flatnonzero(patch.any(axis=0))
  return np.array([y + rows[0], x + cols[0], y + rows[-1] + 1, x + cols[-1] + 1],
                  np.float32)


def generate_example(config: ClutteredDigitsConfig, scaled: _ScaledPool, split: str,
                     index: int) -> dict[str, np.ndarray | int]:
  """Draws example `index` of `split`; a pure function of its arguments."""
  size = config.canvas_size
  pool = scaled.pool
  rng = digits.example_rng(config.seed, split, index, stream=0)
  which = int(rng.integers(len(pool.labels)))
  side = int(rng.integers(config.digit_size[0], config.digit_size[1] + 1))
  y, x = (int(v) for v in rng.integers(0, size - side + 1, size=2))
  digit = scaled.by_size[side][which]

  clutter_rng = digits.example_rng(config.seed, split, index, stream=1)
  num_fragments = int(clutter_rng.integers(config.num_fragments[0],
                                           config.num_fragments[1] + 1))
  canvas = np.zeros((size, size), np.uint8)
  clutter_ids = np.full((config.num_fragments[1],), -1, np.int64)
  frag = config.fragment_size
  for k in range(num_fragments):
    # Another digit: shift by 1..n-1 so the fragment never comes from the digit itself.
    other = (which + int(clutter_rng.integers(1, len(pool.labels)))) % len(pool.labels)
    other_side = int(clutter_rng.integers(config.digit_size[0], config.digit_size[1] + 1))
    cy, cx = clutter_rng.integers(0, other_side - frag + 1, size=2)
    fy, fx = clutter_rng.integers(0, size - frag + 1, size=2)
    fragment = scaled.by_size[other_side][other][cy:cy + frag, cx:cx + frag]
    _paste_max(canvas, fragment, int(fy), int(fx))
    clutter_ids[k] = pool.source_ids[other]
  _paste_max(canvas, digit, y, x)
  return {
      "image": canvas[:, :, None],
      "label": int(pool.labels[which]),
      "box": _tight_box(digit, y, x),
      "source_id": int(pool.source_ids[which]),
      "clutter_source_ids": clutter_ids,
  }


class ClutteredDigits(digits.DigitsBuilder):
  """One scaled digit on a canvas with clutter; label and ground-truth box."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = CONFIGS
  DEFAULT_CONFIG_NAME = "64"

  def _info(self) -> tfds.core.DatasetInfo:
    config = self.builder_config
    _check_config(config)
    size = config.canvas_size
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(shape=(size, size, 1), dtype=np.uint8,
                                          encoding=tfds.features.Encoding.ZLIB),
            "label": tfds.features.ClassLabel(num_classes=10),
            "box": tfds.features.Tensor(shape=(4,), dtype=np.float32),
            "source_id": tfds.features.Scalar(dtype=np.int64),
            "clutter_source_ids": tfds.features.Tensor(
                shape=(config.num_fragments[1],), dtype=np.int64),
        }),
        supervised_keys=("image", "label"),
        homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Offline: scikit-learn ships the digits.
    return {split: self._generate_examples(split) for split in digits.SPLITS}

  def _generate_examples(self, split: str):
    config = self.builder_config
    scaled = _ScaledPool(digits.digit_pool(split),
                         range(config.digit_size[0], config.digit_size[1] + 1))
    for index in range(config.num_examples[split]):
      yield index, generate_example(config, scaled, split, index)
