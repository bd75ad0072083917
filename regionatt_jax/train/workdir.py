"""A run's workdir: what `train_and_evaluate` keeps there, and `load` to read a model back.

    workdir/config.json            the run's config
    workdir/checkpoints/<step>/    orbax checkpoints (train state + data position)
    workdir/damaged_checkpoints/   checkpoints that no longer read back, moved aside
    workdir/metrics.jsonl, tensorboard/, figures/, summary.json
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax.numpy as jnp
import ml_collections
import orbax.checkpoint as ocp

from regionatt_jax import data
from regionatt_jax import nn as ra_nn
from regionatt_jax.train import checkpoint as checkpoint_lib
from regionatt_jax.train import sharding as sharding_lib
from regionatt_jax.train import state as state_lib

CONFIG_FILE = "config.json"
SUMMARY_FILE = "summary.json"


def write_json(workdir: str, name: str, content: Any) -> None:
  """Writes `content` (a ConfigDict or a JSON-able value) to `workdir/name`."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, name), "w") as f:
    if isinstance(content, ml_collections.ConfigDict):
      f.write(content.to_json(indent=2))
    else:
      json.dump(content, f, indent=2)


def checkpoint_manager(workdir: str, config: ml_collections.ConfigDict
                       ) -> ocp.CheckpointManager:
  """The manager of `workdir/checkpoints`, keeping what `config.train` says."""
  return checkpoint_lib.make_manager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      keep_last=config.train.keep_checkpoints, keep_best=config.train.keep_best)


def restore_latest(workdir: str, manager: ocp.CheckpointManager,
                   abstract_state: state_lib.TrainState, *, move_damaged: bool = True
                   ) -> tuple[int, state_lib.TrainState, dict[str, Any]] | None:
  """`(step, train state, data iterator state)` of the newest readable checkpoint.

  Damaged checkpoints are skipped (and, with `move_damaged`, moved to
  `workdir/damaged_checkpoints`); see `checkpoint.restore_newest_readable`. None when
  the workdir has no checkpoint.
  """
  damaged = os.path.join(os.path.abspath(workdir), "damaged_checkpoints")
  restored = checkpoint_lib.restore_newest_readable(
      manager, abstract_state.checkpoint_items(),
      damaged_directory=damaged if move_damaged else None)
  if restored is None:
    return None
  step, items, iterator_state = restored
  return step, abstract_state.replace(**items), iterator_state


def read_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run wrote to `workdir/config.json`."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"workdir {workdir!r} has no {CONFIG_FILE}: it is not the "
                            f"workdir of a training run")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load(workdir: str) -> tuple[Any, dict[str, Any], ml_collections.ConfigDict]:
  """The trained model of a workdir, for inference in one's own code.

    model, variables, config = regionatt_jax.train.load("runs/default")
    logits = model.apply(variables, images, train=False)

  Reads nothing but the workdir (the dataset need not be there) and changes nothing
  in it: a damaged newest checkpoint is skipped, not moved.

  Args:
    workdir: the `--workdir` of a `train_and_evaluate` run.

  Returns:
    The module rebuilt from the run's config (`regionatt_jax.nn.build_model`), its
    variables `{"params": ..., "batch_stats": ...}` (no "batch_stats" for a model
    without BatchNorm) from the newest readable checkpoint, and the run's config.

  Raises:
    FileNotFoundError: no `config.json` or no checkpoint in `workdir`.
    ValueError: no checkpoint reads back, or the checkpoint does not fit the model.
  """
  config = read_config(workdir)
  spec = data.dataset_spec(config.dataset.name)
  model = ra_nn.build_model(config.model, spec.num_classes,
                            jnp.dtype(config.train.compute_dtype))
  abstract = state_lib.abstract_train_state(config, model, (1, *spec.example_shape),
                                            sharding_lib.make_mesh(1))
  manager = checkpoint_manager(workdir, config)
  try:
    restored = restore_latest(workdir, manager, abstract, move_damaged=False)
  finally:
    manager.close()
  if restored is None:
    raise FileNotFoundError(f"workdir {workdir!r} has no checkpoint in "
                            f"{os.path.join(workdir, 'checkpoints')}")
  state = restored[1]
  variables = {"params": state.params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return model, variables, config
