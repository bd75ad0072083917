"""The report's statistics (`experiments/ablation/stats.py`) against hand computations."""

import numpy as np
import pytest

from experiments.ablation import stats

STEPS = [250, 500, 750, 1000]


def test_tail_gain_interpolates_the_curve_at_the_start_of_the_last_fifth():
  # The tail starts at step 800: 0.8 + (0.81 - 0.8) * 50 / 250 = 0.802.
  assert stats.tail_gain(STEPS, [0.5, 0.7, 0.8, 0.81]) == pytest.approx(0.81 - 0.802)
  assert stats.tail_gain(STEPS, [0.5, 0.7, 0.8, 0.81], tail=0.5) == pytest.approx(0.81 - 0.7)


def test_converged_when_the_last_fifth_gains_less_than_half_a_point():
  assert stats.converged(STEPS, [0.5, 0.7, 0.8, 0.81]) is False   # +0.8 points
  assert stats.converged(STEPS, [0.5, 0.7, 0.8, 0.803]) is True   # +0.24 points
  assert stats.converged(STEPS, [0.5, 0.7, 0.9, 0.85]) is True    # a drop is no gain


def test_a_curve_too_short_to_tell_gives_none_and_bad_curves_raise():
  assert stats.converged([1000], [0.9]) is None
  assert stats.tail_gain([900, 1000], [0.8, 0.9]) is None  # nothing at or before 800
  with pytest.raises(ValueError, match="increase"):
    stats.tail_gain([500, 500, 1000], [0.1, 0.2, 0.3])
  with pytest.raises(ValueError, match="one length"):
    stats.tail_gain(STEPS, [0.1, 0.2])
  with pytest.raises(ValueError, match="tail"):
    stats.tail_gain(STEPS, [0.1, 0.2, 0.3, 0.4], tail=1.5)


def test_mean_curve_averages_the_steps_every_seed_has():
  steps, mean, std = stats.mean_curve([([1, 2, 3], [0.1, 0.2, 0.3]),
                                       ([2, 3], [0.4, 0.5])])
  np.testing.assert_array_equal(steps, [2, 3])
  np.testing.assert_allclose(mean, [0.3, 0.4])
  np.testing.assert_allclose(std, [np.std([0.2, 0.4], ddof=1)] * 2)
  assert stats.mean_curve([]) is None


def test_paired_difference_matches_a_hand_t_interval():
  a = np.array([0.90, 0.85, 0.88, 0.92, 0.87])
  b = np.array([0.85, 0.84, 0.83, 0.88, 0.86])
  d = a - b
  half = 2.776445 * d.std(ddof=1) / np.sqrt(5)  # t(0.975, 4 degrees of freedom), tabulated
  found = stats.paired_difference(a, b)
  assert found["n"] == 5
  assert found["mean"] == pytest.approx(d.mean())
  assert found["low"] == pytest.approx(d.mean() - half, rel=1e-5)
  assert found["high"] == pytest.approx(d.mean() + half, rel=1e-5)
  # Pairing matters: the same values shuffled against each other give another interval.
  assert stats.paired_difference(a, b[::-1])["std"] != pytest.approx(found["std"])


def test_paired_difference_of_one_seed_has_no_interval_and_lengths_must_match():
  one = stats.paired_difference([0.9], [0.8])
  assert one["mean"] == pytest.approx(0.1) and np.isnan(one["low"])
  with pytest.raises(ValueError, match="one length"):
    stats.paired_difference([0.9, 0.8], [0.8])
