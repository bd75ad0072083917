r"""Attention-based multiple-instance learning on the offline `digit_bags/16px`.

Bag label: does the bag hold a 9? `MILClassifier` embeds each instance with a small
CNN and pools the bag with attention; the arg `pooling` may be "attention" (default),
"gated", "mean" or "max"; `level=instance` classifies each instance and pools their
positive probabilities instead (mi-Net; pooling "mean" or "max"):

  python -m experiments.train --workdir runs/mil_digit_bags \
      --config experiments/configs/mil_digit_bags.py:pooling=gated
"""

from experiments.configs import common
from regionatt_jax.train.config import base_config


def get_config(arg=None):
  """`base_config()` with what this job changes."""
  args = common.parse_arg(arg, pooling="attention", level="embedding")
  config = base_config()
  config.dataset.name = "digit_bags/16px"
  config.model.name = "MILClassifier"
  config.model.kwargs.pooling = args.pooling
  if args.level != "embedding":  # the model's default
    config.model.kwargs.level = args.level
  config.train.global_batch_size = 16
  config.train.eval_batch_size = 200  # Divides the 400 validation and 1000 test bags.
  # The ablation's bag table (RESULTS.md) trained with 1e-3.
  config.optim.learning_rate = 1e-3
  config.optim.warmup_steps = 50
  return config
