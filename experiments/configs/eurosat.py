r"""ResNet-18 with a 4x4 region-attention head on `eurosat/rgb` (needs a GPU/TPU; not run here).

The recipe of `cifar10.py` (`common.resnet18_recipe`), args as there:

  python -m experiments.train --config experiments/configs/eurosat.py --workdir runs/eurosat

About 100 epochs of the 21.6k training images (80 % of the single split).
"""

from experiments.configs import common


def get_config(arg=None):
  return common.resnet18_recipe("eurosat/rgb", steps=17000, arg=arg)
