"""Evaluation over a split and the attention figures of a trained model."""

from __future__ import annotations

import os
from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from regionatt_jax import viz
from regionatt_jax.train import sharding as sharding_lib

Batch = Mapping[str, np.ndarray]


def evaluate(eval_fn: Callable, state: Any, batches: Iterable[Batch],
             mesh: Mesh) -> dict[str, float]:
  """Accuracy, loss and (with boxes and maps) pointing-game accuracy over a split.

  Args:
    eval_fn: the jitted `regionatt_jax.train.eval_step`.
    state: the train state to evaluate.
    batches: this host's padded batches (`regionatt_jax.data.padded_batches`).
    mesh: the run's mesh; each batch becomes a global array over its 'data' axis.

  Returns:
    `accuracy`, `loss`, `num_examples` and, when the model has a map and the dataset
    boxes, `pointing_game`, as Python floats over the valid examples of every host.
  """
  totals = None
  for batch in batches:
    sums = eval_fn(state, sharding_lib.global_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = max(float(totals["count"]), 1.0)
  result = {"accuracy": totals["correct"] / count, "loss": totals["loss_sum"] / count,
            "num_examples": float(totals["count"])}
  if "pointing_hits" in totals:
    result["pointing_game"] = totals["pointing_hits"] / count
  return {key: float(value) for key, value in result.items()}


def save_figures(infer_fn: Callable, state: Any, batch: Batch, mesh: Mesh, directory: str,
                 count: int) -> list[str]:
  """Image, attention overlay and box of the first `count` valid examples of `batch`.

  Every process calls this with its own padded batch (the gathers are collective);
  the main process writes `directory/test_XX.png` for images (bags get no figure).

  Returns:
    The paths written (empty on the other processes).
  """
  logits, maps = infer_fn(state, sharding_lib.global_batch(batch, mesh))
  # Rows of the global batch: process 0's examples come first.
  logits = multihost_utils.process_allgather(logits, tiled=True)
  maps = None if maps is None else multihost_utils.process_allgather(maps, tiled=True)
  if jax.process_index() != 0 or batch["image"].ndim != 4:
    return []
  paths = []
  for i in range(min(count, int(batch["example_mask"].sum()))):
    title = f"label {int(batch['label'][i])}, predicted {int(np.argmax(logits[i]))}"
    paths.append(viz.save_attention_figure(
        os.path.join(directory, f"test_{i:02d}.png"), batch["image"][i],
        None if maps is None else np.asarray(maps[i]),
        batch["box"][i] if "box" in batch else None, title))
  return paths
