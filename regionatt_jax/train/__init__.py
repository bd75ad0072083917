"""Training: optax loop, sharding over devices and hosts, orbax checkpoints, metrics.

  from regionatt_jax import train
  config = train.base_config()          # every key, with defaults; see config.py
  config.train.steps = 200
  summary = train.train_and_evaluate(config, workdir="runs/mine")   # or model=my_module
  model, variables, config = train.load("runs/mine")                 # for inference

Where things are: `loop.py` (orchestration), `step.py` (`train_step`, `eval_step`,
`predict`: pure; jit them with `jit_steps`), `state.py` (`create_train_state`),
`optim.py` (`make_optimizer`), `evaluate.py` (a split's metrics, figures),
`sharding.py` (`make_mesh`, `global_batch`), `checkpoint.py` (orbax manager with the
data iterator's position saved beside the state; falls back past a damaged
checkpoint), `workdir.py` (the workdir's files, `load`), `metrics.py`
(`MetricWriter`, `pointing_game_hits`), `timer.py` (throughput).
"""

from regionatt_jax.train import checkpoint
from regionatt_jax.train.config import base_config, validate_config
from regionatt_jax.train.loop import train_and_evaluate
from regionatt_jax.train.metrics import MetricWriter, pointing_game_hits, read_jsonl
from regionatt_jax.train.optim import Optimizer, make_optimizer
from regionatt_jax.train.sharding import (batch_sharding, global_batch, make_mesh,
                                          replicated, state_sharding)
from regionatt_jax.train.state import TrainState, abstract_train_state, create_train_state
from regionatt_jax.train.step import eval_step, jit_steps, predict, train_step
from regionatt_jax.train.workdir import load

__all__ = [
    "MetricWriter", "Optimizer", "TrainState", "abstract_train_state", "base_config",
    "batch_sharding", "checkpoint", "create_train_state", "eval_step",
    "global_batch", "jit_steps", "load", "make_mesh", "make_optimizer", "pointing_game_hits",
    "predict", "read_jsonl", "replicated", "state_sharding", "train_and_evaluate",
    "train_step", "validate_config",
]
