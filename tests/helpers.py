"""Shared pieces of the tests (their fixtures are in `conftest.py`): tiny dataset
configs, a tiny model, synthetic batches, `snapshot` of a directory's bytes,
`checkpoint_state` and `wrap_train_batches`.

`TinyCNN` stands in for the library's models where a test is about the training
machinery, not the model: it is small enough to compile and train in well under a
second, and it has BatchNorm (batch stats in the state) and a sown attention map.
"""

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from regionatt_jax import data
from regionatt_jax.data import cluttered_digits, digit_bags

TINY_DIGITS = next(c for c in cluttered_digits.CONFIGS if c.name == "tiny")
# Same seed and sizes as `tiny` without clutter: same digits and boxes, clean canvas.
TINY_DIGITS_CLEAN = dataclasses.replace(TINY_DIGITS, name="tiny_clean", num_fragments=(0, 0))
TINY_BAGS = next(c for c in digit_bags.CONFIGS if c.name == "tiny")


class TinyCNN(nn.Module):
  """conv -> BatchNorm -> ReLU -> sigmoid attention map -> pooled dense logits."""
  num_classes: int = 10
  features: int = 8
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool = False):
    x = nn.Conv(self.features, (3, 3), strides=2, dtype=self.dtype)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.5, dtype=self.dtype)(x))
    attention = nn.sigmoid(nn.Conv(1, (1, 1), dtype=self.dtype)(x))
    self.sow("intermediates", "attention_map", attention[..., 0])
    x = (x * attention).mean(axis=(1, 2))
    return nn.Dense(self.num_classes, dtype=self.dtype)(x)


def synthetic_batches(num_batches: int, batch_size: int, seed: int = 0,
                      image_shape=(16, 16, 3)) -> list[dict[str, np.ndarray]]:
  """Reproducible random batches: `'image'` `(B, H, W, C)`, `'label'` `(B,)`."""
  rng = np.random.default_rng(seed)
  return [dict(image=rng.normal(size=(batch_size, *image_shape)).astype(np.float32),
               label=rng.integers(0, 10, batch_size).astype(np.int32))
          for _ in range(num_batches)]


def snapshot(directory: str) -> dict[str, bytes]:
  """{relative path: bytes} of every file under `directory`."""
  files = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        files[os.path.relpath(path, directory)] = f.read()
  return files


def checkpoint_state(workdir: str, step: int) -> dict[str, np.ndarray]:
  """Every leaf of the train state in checkpoint `step` of `workdir`, by path, as NumPy
  (readable whatever devices the run that wrote it had)."""
  path = os.path.join(workdir, "checkpoints", str(step), "state")
  checkpointer = ocp.PyTreeCheckpointer()
  as_numpy = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray),
                          checkpointer.metadata(path).item_metadata.tree)
  state = checkpointer.restore(path, args=ocp.args.PyTreeRestore(restore_args=as_numpy))
  flat, _ = jax.tree_util.tree_flatten_with_path(state)
  return {jax.tree_util.keystr(path, simple=True, separator="/"): np.asarray(leaf)
          for path, leaf in flat}


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
