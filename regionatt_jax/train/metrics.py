"""Metric writers (JSONL + TensorBoard, main host only) and the pointing game."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import jax
import jax.numpy as jnp


def pointing_game_hits(maps: jax.Array, boxes: jax.Array) -> jax.Array:
  """Whether each attention map points inside its ground-truth box.

  The map points at the centroid of the pixels where it attains its maximum. For a
  region-level map (constant over each region) this is the centre of the top region,
  rather than that region's top-left pixel, which a plain `argmax` would return.

  Args:
    maps: `(B, H, W)` attention maps.
    boxes: `(B, 4)` boxes `(y0, x0, y1, x1)` in pixels, `y1`/`x1` exclusive.

  Returns:
    `(B,)` bool, True where the pointed-at pixel lies inside the box.
  """
  maps = maps.astype(jnp.float32)
  height, width = maps.shape[-2:]
  at_max = (maps == maps.max(axis=(-2, -1), keepdims=True)).astype(jnp.float32)
  count = at_max.sum(axis=(-2, -1))
  # Pixel centres sit at integer + 0.5: a box [y0, y1) holds pixels y0..y1-1.
  rows = jnp.arange(height, dtype=jnp.float32) + 0.5
  cols = jnp.arange(width, dtype=jnp.float32) + 0.5
  y = (at_max.sum(axis=-1) * rows).sum(axis=-1) / count
  x = (at_max.sum(axis=-2) * cols).sum(axis=-1) / count
  boxes = boxes.astype(jnp.float32)
  return ((y >= boxes[:, 0]) & (y < boxes[:, 2]) & (x >= boxes[:, 1]) & (x < boxes[:, 3]))


class MetricWriter:
  """Writes scalars as JSON lines and TensorBoard events, on the main process only.

  `metrics.jsonl` holds one record per call: `{"step": s, "split": ..., name: value}`.
  On resume, `truncate_after(step)` drops records a killed run wrote past its last
  checkpoint, so the file reads as one uninterrupted run.
  """

  def __init__(self, workdir: str, *, enabled: bool | None = None):
    self.enabled = jax.process_index() == 0 if enabled is None else enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # Optional extra [plots]; main host only.
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """Drops JSONL records with a step greater than `step`."""
    if not self.enabled or not os.path.exists(self.path):
      return
    kept = [line for line in read_jsonl(self.path) if line["step"] <= step]
    with open(self.path, "w") as f:
      f.writelines(json.dumps(record) + "\n" for record in kept)

  def write(self, step: int, split: str, scalars: Mapping[str, Any]) -> None:
    """Records `scalars` (numbers) of `split` ('train', 'val', 'test') at `step`."""
    if not self.enabled:
      return
    values = {name: float(value) for name, value in scalars.items()}
    with open(self.path, "a") as f:
      f.write(json.dumps({"step": int(step), "split": split, **values}) + "\n")
    for name, value in values.items():
      if math.isfinite(value):
        self._tb.add_scalar(f"{split}/{name}", value, int(step))

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_jsonl(path: str) -> list[dict[str, Any]]:
  """The records of a `metrics.jsonl` file, in order.

  A last line without its newline is a write cut short by a kill; it is left out.
  """
  with open(path) as f:
    complete_lines = f.read().split("\n")[:-1]
  return [json.loads(line) for line in complete_lines if line.strip()]
