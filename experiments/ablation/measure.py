"""What the training job does not measure, from a finished run's checkpoint.

Parameters, test bag AUC and instance localization (bags), example attention maps for
the figures, and the pointing-game ceiling of a region grid.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from sklearn.metrics import roc_auc_score

import regionatt_jax as ra
from regionatt_jax import data
from regionatt_jax import nn as ra_nn
from regionatt_jax import train
from regionatt_jax.data import digit_bags

#: Test images of seed 0 kept per image row for the figures.
NUM_EXAMPLES = 8


def _attention_outputs(intermediates, image_hw) -> dict[str, Any]:
  """What the figures need from a model's sown attention (None where it has none)."""
  outputs = {"map": ra_nn.attention_maps(intermediates, image_hw)
             if ra_nn.has_attention_map(intermediates) else None}
  for name in (ra_nn.REGION_WEIGHTS, ra_nn.INSTANCE_WEIGHTS):
    try:
      outputs[name] = ra_nn.topmost(intermediates, name)[0]
    except ValueError:
      outputs[name] = None
  return outputs


def predict_fn(model, variables):
  """`batch -> (logits (B, K), attention outputs)` on the host, jitted.

  A batch has `"image"` and, for bags, the instance `"mask"`.
  """

  @jax.jit
  def predict(batch):
    extra = {"mask": batch["mask"]} if "mask" in batch else {}
    logits, collections = model.apply(variables, batch["image"], train=False,
                                      mutable=["intermediates"], **extra)
    return logits.astype(jnp.float32), _attention_outputs(collections.get("intermediates", {}),
                                      batch["image"].shape[-3:-1])

  return lambda batch: jax.device_get(predict(batch))


def test_batches(config: ml_collections.ConfigDict):
  """The test split of `config`'s dataset, in order, the last batch short."""
  return data.make_iterator(config.dataset.name, "test", data_dir=config.dataset.data_dir,
                            global_batch_size=config.train.eval_batch_size, seed=0,
                            shuffle=False, num_epochs=1, drop_remainder=False)


def pointing_ceiling(boxes: np.ndarray, image_hw: tuple[int, int],
                     grid: tuple[int, int]) -> float:
  """The pointing game of the best map a `grid` region head can draw.

  That map is maximal on the one region holding the box centre; the pointing game
  then points at that region's centre, which on a coarse grid can fall outside a box
  smaller than a region although the region holds the digit.

  Args:
    boxes: `(B, 4)` boxes `(y0, x0, y1, x1)`, `y1`/`x1` exclusive.
    image_hw: `(H, W)` of the images.
    grid: `(gh, gw)` regions.

  Returns:
    The fraction of boxes that map points inside.
  """
  boxes = np.asarray(boxes, np.float32)
  centres = (boxes[:, :2] + boxes[:, 2:]) / 2
  cells = np.minimum((centres * np.array(grid) / np.array(image_hw)).astype(int),
                     np.array(grid) - 1)
  weights = np.zeros((len(boxes), grid[0] * grid[1]), np.float32)
  weights[np.arange(len(boxes)), cells[:, 0] * grid[1] + cells[:, 1]] = 1.0
  maps = ra.attention_map(weights, grid, image_shape=image_hw)
  return float(np.mean(train.pointing_game_hits(maps, boxes)))


def test_pointing_ceiling(config: ml_collections.ConfigDict, grid: tuple[int, int]) -> float:
  """`pointing_ceiling` over the test split of `config`'s dataset."""
  batches = list(test_batches(config))
  boxes = np.concatenate([batch["box"] for batch in batches])
  return pointing_ceiling(boxes, batches[0]["image"].shape[1:3], grid)


def instance_hits(weights: np.ndarray, mask: np.ndarray, instance_labels: np.ndarray,
                  target: int) -> np.ndarray:
  """Whether the most attended real instance of each bag is a `target` instance.

  Where several real instances share the largest weight (uniform weights: mean pooling,
  mi-Net mean), a bag scores the fraction of them that are targets, what a random
  choice among them would score; an argmax would pick the first and score the share of
  bags that start with a target.

  Args:
    weights: `(B, N)` instance weights.
    mask: `(B, N)` bool, True for real instances.
    instance_labels: `(B, N)` digit labels.
    target: the label that makes a bag positive.

  Returns:
    `(B,)` float in [0, 1].
  """
  masked = np.where(mask, weights, -np.inf)
  top = mask & (masked == masked.max(axis=-1, keepdims=True))
  # A bag without real instances (none in the datasets) scores 0, not 0 / 0.
  return np.sum(top & (instance_labels == target), axis=-1) / np.maximum(np.sum(top, axis=-1), 1)


def bag_metrics(predict, config: ml_collections.ConfigDict, *, keep_example: bool
                ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Test bag AUC, accuracy and instance localization of a trained MIL model.

  Instance localization is the share of positive test bags whose most attended
  instance is a target digit (ties: `instance_hits`); `chance_localization` is what
  picking a uniformly random real instance would score (the mean fraction of targets
  in a positive bag).

  Args:
    predict: `predict_fn` of the model.
    config: the run's config.
    keep_example: also return the first positive test bag with its weights.

  Returns:
    `(metrics, example)`; `example` is `{}` unless `keep_example`.
  """
  configs = {c.name: c for c in digit_bags.CONFIGS}
  target = configs[config.dataset.name.split("/")[1]].target_digit
  scores, labels, hits, chance = [], [], [], []
  example = {}
  for batch in test_batches(config):
    logits, outputs = predict({"image": batch["image"], "mask": batch["mask"]})
    weights = np.asarray(outputs[ra_nn.INSTANCE_WEIGHTS])
    scores.append(logits[:, 1] - logits[:, 0])
    labels.append(batch["label"])
    positive = batch["label"] == 1
    hit = instance_hits(weights, batch["mask"], batch["instance_labels"], target)
    hits.append(hit[positive])
    is_target = (batch["instance_labels"] == target) & batch["mask"]
    chance.append((is_target.sum(-1) / batch["mask"].sum(-1))[positive])
    if keep_example and not example:
      first = int(np.flatnonzero(positive)[0])
      example = {"bag": batch["image"][first], "weights": weights[first],
                 "mask": batch["mask"][first],
                 "instance_labels": batch["instance_labels"][first]}
  scores, labels = np.concatenate(scores), np.concatenate(labels)
  return {
      "test_auc": float(roc_auc_score(labels, scores)),
      "test_bag_accuracy": float(np.mean((scores > 0) == (labels == 1))),
      "instance_localization": float(np.mean(np.concatenate(hits))),
      "chance_localization": float(np.mean(np.concatenate(chance))),
  }, example


def image_examples(predict, config: ml_collections.ConfigDict) -> dict[str, np.ndarray]:
  """The first test images with their boxes, labels, predictions and attention."""
  batch = next(iter(test_batches(config)))
  batch = {key: value[:NUM_EXAMPLES] for key, value in batch.items()}
  logits, outputs = predict({"image": batch["image"]})
  example = {"image": batch["image"], "box": batch["box"], "label": batch["label"],
             "prediction": np.argmax(logits, -1)}
  for name in ("map", ra_nn.REGION_WEIGHTS):
    if outputs[name] is not None:
      example[name] = np.asarray(outputs[name])
  return example


def parameter_count(variables: Mapping[str, Any]) -> int:
  return int(sum(leaf.size for leaf in jax.tree.leaves(variables["params"])))


def measure(workdir: str, *, bags: bool, keep_example: bool
            ) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """The measurements of the trained run in `workdir` and its figure example.

  Args:
    workdir: the run's directory (config and checkpoints).
    bags: the model is a MIL classifier on bags (AUC and localization).
    keep_example: return test examples with their attention for the figures.

  Returns:
    `(metrics, example)`: `params` and, for bags, `bag_metrics`; `example` is `{}`
    unless `keep_example`.
  """
  model, variables, config = train.load(workdir)
  predict = predict_fn(model, variables)
  metrics = {"params": parameter_count(variables)}
  if bags:
    found, example = bag_metrics(predict, config, keep_example=keep_example)
    metrics.update(found)
  else:
    example = image_examples(predict, config) if keep_example else {}
  return metrics, example
