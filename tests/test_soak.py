"""A short soak run (experiments/soak.py): after warm-up no compilations, flat memory.

The full run is `python -m experiments.soak --steps=3000 ...` (figures in RELIABILITY.md);
this one trains 300 steps with ten log/eval/checkpoint cycles, so every jitted function
and every host-side path (metric windows, evaluation, checkpoint saves and deletions)
runs many times after warm-up.
"""

import pytest

from experiments import soak


@pytest.mark.slow
def test_short_soak_compiles_only_during_warmup_and_memory_stays_flat(tmp_path):
  from regionatt_jax import data  # pylint: disable=g-import-not-at-top
  data_dir = str(tmp_path / "tfds")
  data.prepare("cluttered_digits/tiny", data_dir)
  figures = soak.soak(soak.soak_config(300, data_dir), str(tmp_path / "run"),
                      interval_s=0.1)
  print(f"\nshort soak: {figures}")
  # train, eval and the metric-window stack compile at least once during warm-up.
  assert figures["compiles_total"] >= 2
  assert figures["compiles_after_warmup"] == 0, figures
  assert figures["rss_growth_mb"] < 32, figures
