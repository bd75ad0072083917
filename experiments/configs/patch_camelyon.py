r"""ResNet-18 with a 4x4 region-attention head on `patch_camelyon` (needs a GPU/TPU; not run here).

The recipe of `cifar10.py` (`common.resnet18_recipe`) at batch 256, args as there:

  python -m experiments.train --config experiments/configs/patch_camelyon.py --workdir runs/patch_camelyon

About 20 epochs of the 262k training patches; flips in both axes.
"""

from experiments.configs import common


def get_config(arg=None):
  return common.resnet18_recipe("patch_camelyon", steps=20000, arg=arg, batch_size=256)
