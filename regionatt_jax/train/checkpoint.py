"""Orbax checkpoints of the train state together with the data iterator's position.

A checkpoint step directory holds two items: `state` (params, batch stats, optimizer
state, step, RNG; sharded arrays written by every host) and `data_iterator` (one JSON
file per process with that process's `iterator.get_state()`), so a resumed run sees
exactly the batches the uninterrupted run would have seen. Orbax writes each step into
a temporary directory and renames it on commit, so a crash never leaves a partial
checkpoint that `latest_step` would pick. A checkpoint damaged later (truncated or
corrupted files) is skipped by `restore_newest_readable`, which falls back to the
previous one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from jax.experimental import multihost_utils

STATE = "state"
DATA_ITERATOR = "data_iterator"
BEST_METRIC = "val_accuracy"


class IteratorStateHandler(ocp.CheckpointHandler):
  """Saves a JSON-able iterator state per process (`process_{i}-of-{n}.json`)."""

  def save(self, directory: epath.Path, args: "IteratorStateSave") -> None:
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    (directory / name).write_text(json.dumps(args.state))

  def restore(self, directory: epath.Path, args: "IteratorStateRestore | None" = None
              ) -> dict[str, Any]:
    del args
    path = directory / f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    if not path.exists():
      found = sorted(p.name for p in directory.iterdir())
      raise ValueError(
          f"No data iterator state for this process at {path} (found {found}); the "
          f"checkpoint was written by a run with a different number of processes.")
    return json.loads(path.read_text())

  def metadata(self, directory: epath.Path) -> None:
    del directory

  def finalize(self, directory: epath.Path) -> None:
    del directory

  def close(self) -> None:
    pass


@ocp.args.register_with_handler(IteratorStateHandler, for_save=True)
@dataclasses.dataclass
class IteratorStateSave(ocp.args.CheckpointArgs):
  state: Mapping[str, Any]


@ocp.args.register_with_handler(IteratorStateHandler, for_restore=True)
@dataclasses.dataclass
class IteratorStateRestore(ocp.args.CheckpointArgs):
  pass


def make_manager(directory: str, *, keep_last: int, keep_best: int) -> ocp.CheckpointManager:
  """A manager keeping the latest `keep_last` steps plus the `keep_best` by val accuracy.

  Saving is asynchronous: `save` returns once arrays are copied to host memory and the
  files are written in the background; call `wait_until_finished()` before exiting.
  """
  policies = [ocp.checkpoint_managers.LatestN(n=keep_last)]
  if keep_best:
    policies.append(ocp.checkpoint_managers.BestN(
        get_metric_fn=lambda metrics: metrics[BEST_METRIC], n=keep_best,
        keep_checkpoints_without_metrics=False))
  options = ocp.CheckpointManagerOptions(
      preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
      enable_async_checkpointing=True)
  # Handlers named up front, so a fresh manager can read metadata before any save.
  handlers = {STATE: ocp.StandardCheckpointHandler(), DATA_ITERATOR: IteratorStateHandler()}
  return ocp.CheckpointManager(epath.Path(directory).absolute(), item_handlers=handlers,
                               options=options)


def save(manager: ocp.CheckpointManager, step: int, state_items: Mapping[str, Any],
         iterator_state: Mapping[str, Any], val_accuracy: float | None = None) -> None:
  """Starts saving `state_items` and `iterator_state` as checkpoint `step`."""
  metrics = None if val_accuracy is None else {BEST_METRIC: float(val_accuracy)}
  manager.save(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardSave(state_items),
      DATA_ITERATOR: IteratorStateSave(dict(iterator_state)),
  }), metrics=metrics, force=True)


def _describe(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """`{'params/Conv_0/kernel': (shape, dtype)}` for every leaf of a pytree."""
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {jax.tree_util.keystr(path, simple=True, separator="/"):
          (tuple(leaf.shape), str(np.dtype(leaf.dtype))) for path, leaf in flat}


def check_compatible(manager: ocp.CheckpointManager, step: int, abstract_items: Any) -> None:
  """Raises `ValueError` if checkpoint `step` does not fit the state this run builds.

  Args:
    manager: the run's checkpoint manager.
    step: the checkpoint to check.
    abstract_items: `TrainState.checkpoint_items()` of the abstract state.
  """
  stored = _describe(manager.item_metadata(step)[STATE])
  wanted = _describe(abstract_items)
  where = f"{manager.directory}/{step}"
  missing, extra = sorted(set(wanted) - set(stored)), sorted(set(stored) - set(wanted))
  if missing or extra:
    raise ValueError(
        f"The checkpoint at {where} is from an incompatible model: it lacks "
        f"{missing[:5]} and has {extra[:5]} that this config's model does not. Use a "
        f"new --workdir or the config that wrote it; nothing was changed.")
  # Params first: a differing kernel explains the mismatch better than its moments.
  for name in sorted(wanted, key=lambda n: (not n.startswith("params/"), n)):
    shape, dtype = wanted[name]
    if stored[name] != (shape, dtype):
      raise ValueError(
          f"The checkpoint at {where} is from an incompatible model: {name!r} has "
          f"shape/dtype {stored[name]} there and {(shape, dtype)} in this config's "
          f"model. Use a new --workdir or the config that wrote it; nothing was changed.")


def restore(manager: ocp.CheckpointManager, step: int, abstract_items: Any
            ) -> tuple[Any, dict[str, Any]]:
  """Restores checkpoint `step` onto the shardings of `abstract_items`.

  Returns:
    The state items (same structure as `abstract_items`) and this process's data
    iterator state.
  """
  restored = manager.restore(step, args=ocp.args.Composite(**{
      STATE: ocp.args.StandardRestore(abstract_items),
      DATA_ITERATOR: IteratorStateRestore(),
  }))
  return restored[STATE], restored[DATA_ITERATOR]


def _damage(manager: ocp.CheckpointManager, step: int, abstract_items: Any) -> str | None:
  """Why checkpoint `step` cannot be restored, or None if it restores.

  Raises:
    ValueError: the checkpoint is readable but from an incompatible model.
  """
  try:
    if manager.item_metadata(step)[STATE] is None:
      return "its state metadata is missing or unreadable"
  except Exception as error:  # pylint: disable=broad-except
    return f"{type(error).__name__}: {error}"
  check_compatible(manager, step, abstract_items)
  return None


def restore_newest_readable(manager: ocp.CheckpointManager, abstract_items: Any,
                            damaged_directory: str | None
                            ) -> tuple[int, Any, dict[str, Any]] | None:
  """Restores the newest checkpoint that reads back whole, skipping damaged ones.

  A checkpoint whose files are truncated, corrupted or missing is reported (a warning
  naming its step and the error) and the previous one is tried. Damaged checkpoints
  newer than the one restored are moved into `damaged_directory` (by the main
  process), byte for byte, so the run can write those steps again; nothing is deleted.

  Args:
    manager: the run's checkpoint manager.
    abstract_items: `TrainState.checkpoint_items()` of the abstract state.
    damaged_directory: where damaged checkpoints are moved; None leaves them in place
      (reading a workdir without changing it).

  Returns:
    `(step, state items, data iterator state)`, or None when there is no checkpoint.

  Raises:
    ValueError: a readable checkpoint is from an incompatible model, or no checkpoint
      can be read (then nothing was moved).
  """
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    problem = _damage(manager, step, abstract_items)
    if problem is None:
      try:
        items, iterator_state = restore(manager, step, abstract_items)
      except Exception as error:  # pylint: disable=broad-except
        problem = f"{type(error).__name__}: {error}"
    if problem is not None:
      logging.warning("Checkpoint %d in %s is damaged and is skipped: %s", step,
                      manager.directory, problem[:500])
      damaged.append((step, problem))
      continue
    _move_aside(manager, [s for s, _ in damaged], damaged_directory)
    return step, items, iterator_state
  if damaged:
    listing = "; ".join(f"checkpoint {s}: {p[:200]}" for s, p in damaged)
    raise ValueError(
        f"No checkpoint in {manager.directory} could be read ({listing}). Nothing was "
        f"changed. Restore them from a backup, or start afresh with a new --workdir (or "
        f"after moving {manager.directory} aside).")
  return None


def _move_aside(manager: ocp.CheckpointManager, steps: list[int], directory: str | None
                ) -> None:
  """Moves checkpoint `steps` into `directory`; the manager forgets them."""
  if not steps or directory is None:
    return
  if jax.process_index() == 0:
    os.makedirs(directory, exist_ok=True)
    for step in steps:
      target = os.path.join(directory, str(step))
      suffix = 0
      while os.path.exists(target):  # a step damaged again in a later run
        suffix += 1
        target = os.path.join(directory, f"{step}.{suffix}")
      os.rename(os.path.join(str(manager.directory), str(step)), target)
      logging.warning("Moved damaged checkpoint %d to %s.", step, target)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("regionatt_jax: damaged checkpoints moved")
  manager.reload()
