"""Session fixtures: one tfds data_dir with the tiny datasets, one tiny training config."""

import pytest

from experiments.configs import tiny
from regionatt_jax import data
from tests import helpers


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A tfds data_dir with `cluttered_digits/tiny`, its clean twin and `digit_bags/tiny`."""
  path = str(tmp_path_factory.mktemp("tfds"))
  data.prepare("cluttered_digits/tiny", path)
  data.prepare("cluttered_digits", path, config=helpers.TINY_DIGITS_CLEAN)
  data.prepare("digit_bags/tiny", path)
  return path


@pytest.fixture
def tiny_config(data_dir):
  """A fresh `experiments/configs/tiny.py` config reading from the session `data_dir`."""
  config = tiny.get_config()
  config.dataset.data_dir = data_dir
  return config
