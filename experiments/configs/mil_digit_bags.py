r"""Attention-based multiple-instance learning on the offline `digit_bags/16px`.

Bag label: does the bag hold a 9? `MILClassifier` embeds each instance with a small
CNN and pools the bag with attention (`pooling` may be 'gated', 'mean', 'max').

  python -m experiments.train --config experiments/configs/mil_digit_bags.py \
      --workdir runs/mil_digit_bags
"""

from regionatt_jax.train.config import base_config


def get_config():
  config = base_config()
  config.dataset.name = "digit_bags/16px"
  config.model.name = "MILClassifier"
  config.model.kwargs.pooling = "attention"
  config.train.steps = 1000
  config.train.global_batch_size = 16
  config.train.eval_batch_size = 64
  config.train.log_every = 50
  config.train.eval_every = 250
  config.train.checkpoint_every = 250
  config.optim.learning_rate = 5e-4
  config.optim.warmup_steps = 50
  return config
