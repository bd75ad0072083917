r"""ResNet-18 with a 4x4 region-attention head on `cifar10` (needs a GPU/TPU; not run here).

The dataset is downloaded once by tfds (see `regionatt_jax.data.prepare`):

  python -m experiments.train --config experiments/configs/cifar10.py --workdir runs/cifar10

On several hosts (TPU pod, GPU cluster) run the same command on each with
`--distributed`; `train.global_batch_size` is the batch over all devices.
About 110 epochs of the 45k training images (90 % of the train split).
"""

from regionatt_jax.train.config import base_config


def get_config():
  config = base_config()
  config.dataset.name = "cifar10"
  config.dataset.augment = True
  config.model.name = "RegionAttentionClassifier"
  config.model.kwargs.backbone = "resnet18"
  config.model.kwargs.head = "region"
  config.train.steps = 39000
  config.train.global_batch_size = 128
  config.train.eval_batch_size = 500
  config.train.compute_dtype = "bfloat16"
  config.train.log_every = 100
  config.train.eval_every = 2000
  config.train.checkpoint_every = 2000
  config.optim.name = "sgd"
  config.optim.learning_rate = 0.1 * config.train.global_batch_size / 256
  config.optim.momentum = 0.9
  config.optim.weight_decay = 5e-4
  config.optim.warmup_steps = 500
  config.optim.clip_norm = 0.0
  return config
