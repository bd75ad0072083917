r"""ResNet-18 with a 4x4 region-attention head on `patch_camelyon` (needs a GPU/TPU; not run here).

The cifar10 recipe (`cifar10.py`) at batch 256; the dataset is downloaded once by tfds
(see `regionatt_jax.data.prepare`):

  python -m experiments.train --config experiments/configs/patch_camelyon.py --workdir runs/patch_camelyon

About 20 epochs of the 262k training patches; flips in both axes.
"""

from experiments.configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.dataset.name = "patch_camelyon"
  config.train.steps = 20000
  config.train.global_batch_size = 256
  config.optim.learning_rate = 0.1 * config.train.global_batch_size / 256
  return config
