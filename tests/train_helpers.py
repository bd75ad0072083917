"""Shared pieces of the training tests: a tiny model, tiny configs, synthetic batches,
and `snapshot` of a directory's bytes.

`TinyCNN` stands in for the library's models where a test is about the training
machinery, not the model: it is small enough to compile and train in well under a
second, and it has BatchNorm (batch stats in the state) and a sown attention map.
"""

import os

import flax.linen as nn
import jax.numpy as jnp
import ml_collections
import numpy as np

from regionatt_jax.train import config as config_lib


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


def tiny_config(data_dir: str, steps: int = 6) -> ml_collections.ConfigDict:
  """A config of a few steps on `cluttered_digits/tiny` (32x32) with `TinyCNN`."""
  config = config_lib.base_config()
  config.dataset.name = "cluttered_digits/tiny"
  config.dataset.data_dir = data_dir
  config.model.name = "TinyCNN"
  config.train.steps = steps
  config.train.global_batch_size = 16
  config.train.eval_batch_size = 64
  config.train.log_every = 2
  config.train.eval_every = steps
  config.train.checkpoint_every = 2
  config.train.progress_bar = False
  config.train.num_figures = 2
  config.optim.learning_rate = 3e-3
  config.optim.warmup_steps = 1
  return config


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
