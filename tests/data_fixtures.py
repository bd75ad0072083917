"""Small offline datasets built once per test session, shared by the data tests."""

import dataclasses

import pytest

from regionatt_jax import data
from regionatt_jax.data import cluttered_digits, digit_bags

TINY_DIGITS = next(c for c in cluttered_digits.CONFIGS if c.name == "tiny")
# Same seed and sizes as `tiny` without clutter: same digits and boxes, clean canvas.
TINY_DIGITS_CLEAN = dataclasses.replace(TINY_DIGITS, name="tiny_clean", num_fragments=(0, 0))
TINY_BAGS = next(c for c in digit_bags.CONFIGS if c.name == "tiny")


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A tfds data_dir with `cluttered_digits/tiny`, its clean twin and `digit_bags/tiny`."""
  path = str(tmp_path_factory.mktemp("tfds"))
  data.prepare("cluttered_digits/tiny", path)
  data.prepare("cluttered_digits", path, config=TINY_DIGITS_CLEAN)
  data.prepare("digit_bags/tiny", path)
  return path


def wrap_train_batches(monkeypatch, on_batch):
  """Routes every training batch through `on_batch(count, batch)` (count from 1).

  Patches `data.make_iterator` so that the train split's iterator keeps its
  `get_state`/`set_state` (checkpoints still save its position); other splits are
  untouched. `on_batch` returns the batch to use, or raises to kill the run there.
  """
  make_iterator = data.make_iterator

  class Wrapped:
    def __init__(self, iterator):
      self.iterator, self.count = iterator, 0

    def __iter__(self):
      return self

    def __next__(self):
      batch = next(self.iterator)
      self.count += 1
      return on_batch(self.count, batch)

    def get_state(self):
      return self.iterator.get_state()

    def set_state(self, state):
      self.iterator.set_state(state)

  def wrapped(name, split, **kwargs):
    iterator = make_iterator(name, split, **kwargs)
    return Wrapped(iterator) if split == "train" else iterator

  monkeypatch.setattr(data, "make_iterator", wrapped)
