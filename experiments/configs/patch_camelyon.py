r"""ResNet-18 with a 4x4 region-attention head on `patch_camelyon` (needs a GPU/TPU; not run here).

The dataset is downloaded once by tfds (see `regionatt_jax.data.prepare`):

  python -m experiments.train --config experiments/configs/patch_camelyon.py --workdir runs/patch_camelyon

On several hosts (TPU pod, GPU cluster) run the same command on each with
`--distributed`; `train.global_batch_size` is the batch over all devices.
About 20 epochs of the 262k training patches; flips in both axes.
"""

from regionatt_jax.train.config import base_config


def get_config():
  config = base_config()
  config.dataset.name = "patch_camelyon"
  config.dataset.augment = True
  config.model.name = "RegionAttentionClassifier"
  config.model.kwargs.backbone = "resnet18"
  config.model.kwargs.head = "region"
  config.train.steps = 20000
  config.train.global_batch_size = 256
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
