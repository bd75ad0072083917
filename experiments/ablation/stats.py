"""The statistics of the report: when a learning curve has converged, and paired
differences over seeds with their confidence interval."""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

#: A run has converged when its validation accuracy gains less than `CONVERGED_GAIN`
#: (0.5 points) over the last `CONVERGED_TAIL` (20 %) of its steps.
CONVERGED_TAIL = 0.2
CONVERGED_GAIN = 0.005


def _curve(steps: Sequence[float], values: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
  steps, values = np.asarray(steps, np.float64), np.asarray(values, np.float64)
  if steps.ndim != 1 or steps.shape != values.shape:
    raise ValueError(f"steps and values must be 1-D of one length, got shapes "
                     f"{steps.shape} and {values.shape}")
  if np.any(np.diff(steps) <= 0):
    raise ValueError(f"steps must increase, got {steps.tolist()}")
  return steps, values


def tail_gain(steps: Sequence[float], values: Sequence[float],
              tail: float = CONVERGED_TAIL) -> float | None:
  """What a curve gains over the last `tail` share of its steps.

  Args:
    steps: `(T,)` increasing steps of the evaluations, the last being the run's last.
    values: `(T,)` the metric at those steps (e.g. validation accuracy).
    tail: share of the run's steps, in (0, 1).

  Returns:
    `values[-1]` minus the curve (linearly interpolated) at step `(1 - tail) * steps[-1]`;
    None when no evaluation lies at or before that step (the curve cannot tell).

  Raises:
    ValueError: curves of different lengths, steps that do not increase, or `tail`
      outside (0, 1).
  """
  if not 0 < tail < 1:
    raise ValueError(f"tail must be in (0, 1), got {tail}")
  steps, values = _curve(steps, values)
  start = (1 - tail) * steps[-1] if len(steps) else 0.0
  if len(steps) < 2 or steps[0] > start:
    return None
  return float(values[-1] - np.interp(start, steps, values))


def converged(steps: Sequence[float], values: Sequence[float], *,
              tail: float = CONVERGED_TAIL, gain: float = CONVERGED_GAIN) -> bool | None:
  """Whether a curve gains less than `gain` over its last `tail` (None: cannot tell)."""
  found = tail_gain(steps, values, tail)
  return None if found is None else found < gain


def mean_curve(curves: Sequence[tuple[Sequence[float], Sequence[float]]]
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
  """Mean and sample std (ddof=1; 0 for one curve) of curves over their common steps.

  Args:
    curves: `(steps, values)` pairs, one per seed.

  Returns:
    `(steps, mean, std)` over the steps every curve has; None if there are none.
  """
  if not curves:
    return None
  checked = [_curve(steps, values) for steps, values in curves]
  common = checked[0][0]
  for steps, _ in checked[1:]:
    common = np.intersect1d(common, steps)
  if not len(common):
    return None
  stacked = np.stack([values[np.searchsorted(steps, common)] for steps, values in checked])
  std = stacked.std(0, ddof=1) if len(checked) > 1 else np.zeros(len(common))
  return common, stacked.mean(0), std


def paired_difference(a: Sequence[float], b: Sequence[float],
                      confidence: float = 0.95) -> dict[str, float]:
  """The mean of the per-seed differences `a - b` and its t-based confidence interval.

  Args:
    a: `(n,)` a metric of one row, one value per seed.
    b: `(n,)` the same metric of the row it is compared with, on the same seeds (same
      initialization seed and data order), in the same order.
    confidence: the interval's coverage, in (0, 1).

  Returns:
    `n`, `mean`, `std` (sample std of the differences), and `low`, `high`: `mean -+
    t_{n-1} * std / sqrt(n)`, with `t_{n-1}` the `(1 + confidence) / 2` quantile of
    Student's t with n - 1 degrees of freedom (NaN for n < 2).

  Raises:
    ValueError: `a` and `b` of different lengths, or empty.
  """
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape or a.ndim != 1 or not len(a):
    raise ValueError(f"a and b must be non-empty 1-D of one length (one value per seed), "
                     f"got shapes {a.shape} and {b.shape}")
  differences = a - b
  n, mean = len(differences), float(differences.mean())
  if n < 2:
    return {"n": 1, "mean": mean, "std": float("nan"), "low": float("nan"),
            "high": float("nan")}
  std = float(differences.std(ddof=1))
  half = float(scipy_stats.t.ppf((1 + confidence) / 2, n - 1)) * std / np.sqrt(n)
  return {"n": n, "mean": mean, "std": std, "low": mean - half, "high": mean + half}
