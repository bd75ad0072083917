r"""Soak run: thousands of training steps of a tiny model, watching memory and compilations.

  python -m experiments.soak --steps=3000 --workdir=/tmp/soak --out=soak.json

Trains the tiny config of the reliability tests (a `RegionAttentionClassifier` with a
4/8-channel CNN on `cluttered_digits/tiny`) through `train_and_evaluate`, with periodic
logging, evaluation and checkpointing, while a thread samples the process's resident
memory (RSS) and a `jax.monitoring` listener counts XLA compilations. After the warm-up
(the first evaluation and checkpoint cycle, when every jitted function has compiled once)
there must be no more compilations (a re-trace per step would leak executables and
time) and RSS must stay flat (no host-side cache or history that grows with steps).
Exits with status 1 if either fails; `--out` gets the figures as JSON.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import app, flags

from experiments import timing
from experiments.configs import tiny
from regionatt_jax.train import loop

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"

_STEPS = flags.DEFINE_integer("steps", 3000, "Training steps.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for the run (must be new).")
_DATA_DIR = flags.DEFINE_string("data_dir", "", "tfds data_dir ('' = tfds default).")
_OUT = flags.DEFINE_string("out", None, "Write the figures here as JSON.")
_MAX_GROWTH_MB = flags.DEFINE_float(
    "max_growth_mb", 32.0, "Largest RSS growth after warm-up that still passes.")


def soak_config(steps: int, data_dir: str = "") -> ml_collections.ConfigDict:
  """The tiny config, with a log, evaluation and checkpoint cycle every `steps // 10`."""
  config = tiny.get_config()
  config.dataset.data_dir = data_dir
  cycle = max(steps // 10, 2)
  config.train.update(steps=steps, log_every=max(cycle // 5, 1), eval_every=cycle,
                      checkpoint_every=cycle, keep_best=1)
  return config


def rss_mb() -> float:
  """Resident memory of this process in MiB (Linux: /proc/self/statm)."""
  with open("/proc/self/statm") as f:
    resident_pages = int(f.read().split()[1])
  return resident_pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def _last_logged_step(path: str) -> int:
  """The step of the last complete line of metrics.jsonl (0 before the first)."""
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    return 0
  for line in reversed(lines):
    try:
      return int(json.loads(line)["step"])
    except (json.JSONDecodeError, KeyError):
      continue
  return 0


class _Monitor:
  """Samples `(seconds, logged step, RSS MiB)` in a thread; records compile times."""

  def __init__(self, workdir: str, interval_s: float):
    self.metrics_path = os.path.join(workdir, "metrics.jsonl")
    self.interval_s = interval_s
    self.start = time.time()
    self.samples: list[tuple[float, int, float]] = []
    self.compile_times: list[float] = []
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)

  def on_event(self, event: str, duration: float, **kwargs) -> None:
    del duration, kwargs
    if event == COMPILE_EVENT:
      self.compile_times.append(time.time() - self.start)

  def _run(self) -> None:
    while not self._stop.wait(self.interval_s):
      self.samples.append((time.time() - self.start, _last_logged_step(self.metrics_path),
                           rss_mb()))

  def __enter__(self):
    jax.monitoring.register_event_duration_secs_listener(self.on_event)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._stop.set()
    self._thread.join()
    jax.monitoring.unregister_event_duration_listener(self.on_event)


def soak(config: ml_collections.ConfigDict, workdir: str, *,
         interval_s: float = 0.25) -> dict[str, Any]:
  """Trains `config` in `workdir`, sampling RSS and counting compilations.

  Warm-up ends at the first logged step after the first evaluation and checkpoint
  (`train.eval_every`, `train.checkpoint_every`).

  Returns:
    Figures: `steps`, `wall_s`, `compiles_total`, `compiles_after_warmup`,
    `rss_after_warmup_mb` (median of the first fifth of post-warm-up samples),
    `rss_end_mb` (median of the last fifth), `rss_growth_mb`, `rss_peak_mb`,
    `rss_slope_mb_per_1k_steps` (least squares over the post-warm-up samples),
    `num_samples`, `warmup_steps`, and `rss_trace` (about 20 `[step, MiB]` samples
    over the whole run).
  """
  warmup_steps = max(config.train.eval_every, config.train.checkpoint_every)
  with _Monitor(workdir, interval_s) as monitor:
    loop.train_and_evaluate(config, workdir)
  wall_s = time.time() - monitor.start
  # Steady state: samples logged past warm-up and before training ended (the final
  # test evaluation is excluded from memory figures, but not from compile counts).
  steady = [s for s in monitor.samples if warmup_steps < s[1] < config.train.steps]
  if len(steady) < 10:
    raise ValueError(
        f"only {len(steady)} memory samples after warm-up (step {warmup_steps}); use "
        f"more steps than {config.train.steps} or a shorter interval than {interval_s} s")
  warmup_end_s = steady[0][0]
  fifth = max(len(steady) // 5, 1)
  rss_after = statistics.median(s[2] for s in steady[:fifth])
  rss_end = statistics.median(s[2] for s in steady[-fifth:])
  return {
      "steps": config.train.steps, "warmup_steps": warmup_steps, "wall_s": wall_s,
      "compiles_total": len(monitor.compile_times),
      "compiles_after_warmup": sum(t > warmup_end_s for t in monitor.compile_times),
      "rss_after_warmup_mb": rss_after, "rss_end_mb": rss_end,
      "rss_growth_mb": rss_end - rss_after,
      "rss_peak_mb": max(s[2] for s in monitor.samples),
      "rss_slope_mb_per_1k_steps": 1000 * float(np.polyfit(
          [s[1] for s in steady], [s[2] for s in steady], 1)[0]),
      "num_samples": len(steady),
      "rss_trace": [[s[1], round(s[2], 1)]
                    for s in monitor.samples[::max(len(monitor.samples) // 20, 1)]],
  }


def main(argv):
  del argv
  if os.path.exists(_WORKDIR.value):
    raise app.UsageError(f"--workdir {_WORKDIR.value} exists; a soak run needs a new one")
  figures = soak(soak_config(_STEPS.value, _DATA_DIR.value), _WORKDIR.value)
  figures["environment"] = timing.environment({"jax": jax.__version__})
  print(json.dumps(figures, indent=2))
  if _OUT.value:
    with open(_OUT.value, "w") as f:
      json.dump(figures, f, indent=2)
  failures = []
  if figures["compiles_after_warmup"]:
    failures.append(f"{figures['compiles_after_warmup']} compilations after warm-up")
  if figures["rss_growth_mb"] > _MAX_GROWTH_MB.value:
    failures.append(f"RSS grew {figures['rss_growth_mb']:.1f} MiB after warm-up "
                    f"(limit {_MAX_GROWTH_MB.value} MiB)")
  if failures:
    raise SystemExit("soak failed: " + "; ".join(failures))


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
