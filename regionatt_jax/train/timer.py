"""Training throughput: one definition of images per second, for the log and the summary.

A step is timed from when the previous one finished to when it finishes, without the
first (compiling) step and without the pauses for logging, evaluation and checkpoints.
Steps run ahead asynchronously, so the timer waits for them (`jax.block_until_ready`)
before a pause starts; their time then counts as training, not as the pause.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import jax


class StepTimer:
  """Counts timed steps and their seconds; `lap()` gives the figures since the last lap.

  Usage::

    timer = StepTimer()
    for step in ...:
      metrics = train_fn(...)
      timer.step(metrics)
      with timer.paused(metrics):   # log, evaluate, save
        ...
    steps, seconds = timer.total()

  Args:
    clock: monotonic seconds (`time.perf_counter`; a fake one in tests).
  """

  def __init__(self, clock: Callable[[], float] = time.perf_counter):
    self._clock = clock
    self._start: float | None = None
    self._steps = 0
    self._paused = 0.0
    self._pause_start: float | None = None
    self._lap = (0, 0.0)

  def step(self, outputs: Any) -> None:
    """Records a dispatched step; the first one is waited for and starts the clock."""
    if self._start is None:
      jax.block_until_ready(outputs)
      self._start = self._clock()
    else:
      self._steps += 1

  @contextlib.contextmanager
  def paused(self, outputs: Any) -> Iterator[None]:
    """Waits for `outputs` (the last step's), then keeps the block's time out of training."""
    jax.block_until_ready(outputs)
    self._pause_start = self._clock()
    try:
      yield
    finally:
      self._paused += self._clock() - self._pause_start
      self._pause_start = None

  def total(self) -> tuple[int, float]:
    """`(timed steps, their seconds)` since the clock started."""
    if self._start is None:
      return 0, 0.0
    now = self._clock() if self._pause_start is None else self._pause_start
    return self._steps, now - self._start - self._paused

  def lap(self) -> tuple[int, float]:
    """`(timed steps, their seconds)` since the previous `lap()`."""
    steps, seconds = self.total()
    previous, self._lap = self._lap, (steps, seconds)
    return steps - previous[0], seconds - previous[1]


def throughput(steps: int, seconds: float, batch_size: int) -> dict[str, float]:
  """`step_time_s` and `images_per_sec` of `steps` timed steps; `{}` when none was timed."""
  if steps == 0 or seconds <= 0:
    return {}
  return {"step_time_s": seconds / steps, "images_per_sec": batch_size * steps / seconds}
