r"""ResNet-18 with a 4x4 region-attention head on `cifar10` (needs a GPU/TPU; not run here).

The recipe is `common.resnet18_recipe` (SGD; its docstring says why); args choose the
attention as in `cluttered.py`, e.g. `:attention=se,head=none`. The dataset is
downloaded once by tfds (see `regionatt_jax.data.prepare`):

  python -m experiments.train --config experiments/configs/cifar10.py --workdir runs/cifar10

On several hosts (TPU pod, GPU cluster) run the same command on each with
`--distributed`; `train.global_batch_size` is the batch over all devices.
About 110 epochs of the 45k training images (90 % of the train split).
"""

from experiments.configs import common


def get_config(arg=None):
  return common.resnet18_recipe("cifar10", steps=39000, arg=arg)
