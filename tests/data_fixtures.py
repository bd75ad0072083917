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
