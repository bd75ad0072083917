r"""A tiny training config for the reliability tests and the soak run.

  python -m experiments.train --config tests/reliability_config.py --workdir /tmp/rel

`RegionAttentionClassifier` with a two-stage 4/8-channel CNN on `cluttered_digits/tiny`
(32x32): a step takes milliseconds, so a test can run, kill and resume it many times.
Checkpoints every 2 steps, metrics every step.
"""

from regionatt_jax.train import config as config_lib


def get_config():
  config = config_lib.base_config()
  config.dataset.name = "cluttered_digits/tiny"
  config.model.name = "RegionAttentionClassifier"
  config.model.kwargs.backbone_kwargs = {"features": (4, 8)}
  config.model.kwargs.head_kwargs = {"grid": (2, 2)}
  config.train.steps = 12
  config.train.global_batch_size = 8
  config.train.eval_batch_size = 64
  config.train.log_every = 1
  config.train.eval_every = 6
  config.train.checkpoint_every = 2
  config.train.keep_checkpoints = 2
  config.train.keep_best = 0
  config.train.progress_bar = False
  config.train.num_figures = 0
  config.optim.learning_rate = 3e-3
  config.optim.warmup_steps = 2
  return config
