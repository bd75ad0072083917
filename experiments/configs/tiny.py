r"""A run of seconds: the tests' and the soak run's config, and a quick check of an install.

  python -m experiments.train --config experiments/configs/tiny.py --workdir /tmp/tiny

`RegionAttentionClassifier` with a two-stage 4/8-channel CNN and a 2x2 region head on
`cluttered_digits/tiny` (32x32 canvases): a step takes milliseconds, so a test can run,
kill and resume it many times. Metrics every step, evaluation every 6, checkpoints
every 2.
"""

from regionatt_jax.train.config import base_config


def get_config():
  config = base_config()
  config.dataset.name = "cluttered_digits/tiny"
  config.model.kwargs.backbone_kwargs = {"features": (4, 8)}
  config.model.kwargs.head_kwargs = {"grid": (2, 2)}
  config.train.steps = 12
  config.train.global_batch_size = 8
  config.train.eval_batch_size = 64
  config.train.log_every = 1
  config.train.eval_every = 6
  config.train.checkpoint_every = 2
  config.train.keep_best = 0
  config.train.progress_bar = False
  config.train.num_figures = 0
  config.optim.learning_rate = 3e-3
  config.optim.warmup_steps = 2
  return config
