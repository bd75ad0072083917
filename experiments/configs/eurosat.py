r"""ResNet-18 with a 4x4 region-attention head on `eurosat/rgb` (needs a GPU/TPU; not run here).

The cifar10 recipe (`cifar10.py`); the dataset is downloaded once by tfds (see
`regionatt_jax.data.prepare`):

  python -m experiments.train --config experiments/configs/eurosat.py --workdir runs/eurosat

About 100 epochs of the 21.6k training images (80 % of the single split).
"""

from experiments.configs import cifar10


def get_config():
  config = cifar10.get_config()
  config.dataset.name = "eurosat/rgb"
  config.train.steps = 17000
  return config
