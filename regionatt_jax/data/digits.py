"""scikit-learn's bundled 8x8 digits as the source of the offline datasets.

The 1797 digits are partitioned once, by a fixed seed and stratified by class, into
disjoint source pools for train / validation / test, so that no source digit (nor any
fragment of one) appears in two splits. Everything here is NumPy; no TensorFlow.
"""

from __future__ import annotations

import functools
import inspect
from typing import NamedTuple

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

SPLITS = ("train", "validation", "test")
# Fractions of each class that go to the train and validation pools; test gets the rest.
_POOL_FRACTIONS = (0.7, 0.15)
_POOL_SEED = 20240601  # fixed, so the pools never depend on a dataset's generation seed


class DigitPool(NamedTuple):
  """The source digits of one split.

  Attributes:
    images: `(n, 8, 8)` float32 in [0, 1].
    labels: `(n,)` int64 digit classes.
    source_ids: `(n,)` int64 indices into `sklearn.datasets.load_digits()`.
  """

  images: np.ndarray
  labels: np.ndarray
  source_ids: np.ndarray


@functools.lru_cache(maxsize=1)
def _load_digits() -> tuple[np.ndarray, np.ndarray]:
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  images = (digits.images / 16.0).astype(np.float32)  # sklearn stores 0..16
  return images, digits.target.astype(np.int64)


def pool_source_ids() -> dict[str, np.ndarray]:
  """Returns the disjoint, class-stratified split of the sklearn digit indices.

  Returns:
    Split name -> sorted `(n_split,)` int64 indices; their union is all 1797 digits.
  """
  _, labels = _load_digits()
  rng = np.random.default_rng(_POOL_SEED)
  pools = {split: [] for split in SPLITS}
  for digit in range(10):
    ids = rng.permutation(np.flatnonzero(labels == digit))
    n_train = round(len(ids) * _POOL_FRACTIONS[0])
    n_val = round(len(ids) * _POOL_FRACTIONS[1])
    pools["train"].append(ids[:n_train])
    pools["validation"].append(ids[n_train:n_train + n_val])
    pools["test"].append(ids[n_train + n_val:])
  return {split: np.sort(np.concatenate(ids)) for split, ids in pools.items()}


def digit_pool(split: str) -> DigitPool:
  """Returns the source digits reserved for `split` (one of `SPLITS`)."""
  if split not in SPLITS:
    raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
  images, labels = _load_digits()
  ids = pool_source_ids()[split]
  return DigitPool(images[ids], labels[ids], ids)


def example_rng(seed: int, split: str, index: int, stream: int = 0) -> np.random.Generator:
  """A generator that depends only on (seed, split, index, stream).

  Each example draws from its own generator so that regeneration is bit-identical and
  independent of generation order; separate `stream`s let e.g. the digit placement stay
  the same when only the clutter level of a config changes.
  """
  return np.random.default_rng([seed, SPLITS.index(split), index, stream])


def _bilinear_matrix(size_out: int, size_in: int) -> np.ndarray:
  """`(size_out, size_in)` bilinear interpolation weights, half-pixel centres."""
  centres = (np.arange(size_out) + 0.5) * size_in / size_out - 0.5
  centres = np.clip(centres, 0, size_in - 1)
  lower = np.floor(centres).astype(int)
  upper = np.minimum(lower + 1, size_in - 1)
  frac = centres - lower
  weights = np.zeros((size_out, size_in), np.float32)
  np.add.at(weights, (np.arange(size_out), lower), 1 - frac)
  np.add.at(weights, (np.arange(size_out), upper), frac)
  return weights


def resize(images: np.ndarray, size: int) -> np.ndarray:
  """Bilinear resize of square images.

  Args:
    images: `(..., s, s)` float images.
    size: side of the output.

  Returns:
    `(..., size, size)` float32.
  """
  weights = _bilinear_matrix(size, images.shape[-1])
  return np.einsum("ij,...jk,lk->...il", weights, images, weights).astype(np.float32)


def to_uint8(images: np.ndarray) -> np.ndarray:
  """Float images in [0, 1] -> uint8 in [0, 255], rounded."""
  return np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)


class DigitsBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Base of the offline builders: a `GeneratorBasedBuilder` with a plain `code_path`.

  tfds 4.9.10's `code_path` looks up `importlib_resources`, a backport that it only
  declares for Python < 3.9, and fails without it; the path of the class's file, its
  own fallback, is all that offline builders need (they have no checksums file).
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))
