"""Training the table: datasets, one run per (row, seed), worker processes, locks.

Every (row, seed) trains through `regionatt_jax.train.train_and_evaluate` in its
own directory `<out>/<row key>/seed_<s>`. A run is finished when its `result.json`
exists, or when a recorded document (`results/metrics.json`, committed) holds a record
of it that `is_current`; finished runs are skipped, so a command resumes after an
interruption (an unfinished run resumes from its own checkpoint), also on another
machine from the committed document, and a per-run lock lets several commands share one
`--out`.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import threading
import time
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from experiments import timing
from experiments.ablation import measure
from experiments.ablation import stats
from experiments.configs import ablation as table
from regionatt_jax import data
from regionatt_jax import train
from regionatt_jax.data import digit_bags

RESULT_FILE = "result.json"
LOCK_FILE = "running.pid"
SESSIONS_FILE = "sessions.jsonl"  # one line per training command: start, minutes, runs
COMMANDS_FILE = "commands.txt"  # every command that added runs to `out`
EXAMPLES_FILE = "examples.npz"
SKIPPED = 3  # exit status of a worker that found its run taken by another process


def run_dir(out: str, row: table.Row, seed: int) -> str:
  return os.path.join(out, row.key, f"seed_{seed}")


def is_current(result: Mapping[str, Any]) -> bool:
  """Whether a run's `result.json` is a run the table trains now.

  True when its row is in the table with its seed among the row's seeds, and its
  `steps`, `batch_size` and `dataset` are those of `table.make_config(row, seed)`: a
  record of another budget (an older table) does not count as finished.
  """
  row = table.ROWS_BY_KEY.get(result["row"])
  if row is None or result["seed"] not in row.seeds:
    return False
  config = table.make_config(row, result["seed"], data_dir="")
  return ((result.get("steps"), result.get("batch_size"), result.get("dataset"))
          == (config.train.steps, config.train.global_batch_size, config.dataset.name))


def prepare_bag_subset(data_dir: str, train_examples: int) -> str:
  """Builds `digit_bags/16px` with `train_examples` training bags; returns its data_dir.

  The training job reads datasets by registered name, and the registered `16px` config
  has 2000 training bags. So this builds a custom config (same generator, seed,
  validation and test bags; fewer training bags) under its own name, then moves it to
  the tfds path of `digit_bags/16px` inside a data_dir of its own, where
  `dataset.name = "digit_bags/16px"` reads it. A no-op when already built.
  """
  subset_dir = table.bag_data_dir(data_dir, train_examples)
  target = os.path.join(subset_dir, "digit_bags", "16px")
  if os.path.isdir(target):
    return subset_dir
  base = {c.name: c for c in digit_bags.CONFIGS}["16px"]
  name = f"16px_train{train_examples}"
  config = dataclasses.replace(base, name=name, description=f"{base.description} "
                               f"{train_examples} training bags.",
                               num_examples={**base.num_examples, "train": train_examples})
  data.prepare("digit_bags", subset_dir, config=config)
  os.rename(os.path.join(subset_dir, "digit_bags", name), target)
  return subset_dir


def prepare_datasets(rows: Iterable[table.Row], data_dir: str, smoke: bool) -> None:
  """Builds every dataset the rows need, once, before workers start reading them."""
  for row in rows:
    if row.train_examples is not None and not smoke:
      prepare_bag_subset(data_dir, row.train_examples)
    else:
      data.prepare(table.make_config(row, 0, data_dir=data_dir, smoke=smoke).dataset.name,
                   data_dir)


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def claim(workdir: str) -> bool:
  """Takes the lock of `workdir` for this process; False if a live process holds it.

  Lets several `experiments.ablation` commands share one `--out`: each skips the runs
  another is training. A lock whose process has died is taken over.
  """
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_FILE)
  while True:
    try:
      handle = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
      try:
        with open(path) as f:
          holder = int(f.read() or 0)
      except (OSError, ValueError):
        holder = 0
      if holder and holder != os.getpid() and _alive(holder):
        return False
      try:
        os.remove(path)
      except FileNotFoundError:
        pass
      continue
    with os.fdopen(handle, "w") as f:
      f.write(str(os.getpid()))
    return True


def run_one(row: table.Row, seed: int, out: str, *, data_dir: str, smoke: bool = False
            ) -> dict[str, Any] | None:
  """Trains and measures one (row, seed); writes and returns its `result.json`.

  Returns None, doing nothing, when another live process is training this run.
  """
  workdir = run_dir(out, row, seed)
  path = os.path.join(workdir, RESULT_FILE)
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  if not claim(workdir):
    return None
  try:
    return _train_and_measure(row, seed, workdir, path, data_dir=data_dir, smoke=smoke)
  finally:
    os.remove(os.path.join(workdir, LOCK_FILE))


def _train_and_measure(row: table.Row, seed: int, workdir: str, path: str, *, data_dir: str,
                       smoke: bool) -> dict[str, Any]:
  config = table.make_config(row, seed, data_dir=data_dir, smoke=smoke)
  summary = train.train_and_evaluate(config, workdir)
  metrics = _measure(row, seed, workdir)
  curve = learning_curve(workdir)
  result = {
      "row": row.key, "name": row.name, "label": row.label, "table": row.table,
      "family": row.family, "backbone": row.backbone, "seed": seed,
      "train_examples": row.train_examples,
      "steps": config.train.steps, "batch_size": config.train.global_batch_size,
      "dataset": config.dataset.name, "curve": curve,
      "val_gain_last_20pct": stats.tail_gain(curve["step"], curve["val_accuracy"]),
      "converged": stats.converged(curve["step"], curve["val_accuracy"]),
      **{key: summary[key] for key in ("test_accuracy", "test_pointing_game",
                                        "final_train_loss", "wall_time_s")},
      "images_per_sec": summary["train_images_per_sec"],
      **metrics,
  }
  _write_result(path, result)  # Written last: its presence marks the run finished.
  return result


def _measure(row: table.Row, seed: int, workdir: str) -> dict[str, Any]:
  """`measure.measure` of the run in `workdir`; saves the figure example of a row's
  first seed."""
  metrics, example = measure.measure(workdir, bags=row.table == "bags",
                                     keep_example=seed == min(row.seeds))
  if example:
    np.savez_compressed(os.path.join(workdir, EXAMPLES_FILE), **example)
  return metrics


def _write_result(path: str, result: dict[str, Any]) -> None:
  """Writes `result.json` whole or not at all."""
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=2)
  os.replace(path + ".tmp", path)


def remeasure(row: table.Row, seed: int, out: str) -> bool:
  """Measures the finished run `(row, seed)` of `out` again from its checkpoint, after a
  change to the measurements, and rewrites its `result.json`; False if it has not
  finished. Training, curve and timings are kept."""
  workdir = run_dir(out, row, seed)
  path = os.path.join(workdir, RESULT_FILE)
  if not os.path.exists(path):
    return False
  with open(path) as f:
    result = json.load(f)
  _write_result(path, {**result, **_measure(row, seed, workdir)})
  return True


def learning_curve(workdir: str) -> dict[str, list[float]]:
  """The validation accuracy `(step, val_accuracy)` of the run in `workdir`, in order."""
  records = [r for r in train.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
             if r["split"] == "val"]
  return {"step": [r["step"] for r in records],
          "val_accuracy": [r["accuracy"] for r in records]}


def _worker_env(threads: int) -> dict[str, str]:
  env = timing.allocator_env(timing.TUNED_ALLOCATOR, TF_CPP_MIN_LOG_LEVEL="2")
  if threads == 1:
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") +
                        " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")
  return env


def _run_subprocess(row: table.Row, seed: int, args) -> int:
  """Runs one (row, seed) in a fresh process; returns its exit status."""
  workdir = run_dir(args.out, row, seed)
  os.makedirs(workdir, exist_ok=True)
  command = [sys.executable, "-m", "experiments.ablation", "--one", row.key,
             "--seed", str(seed), "--out", args.out, "--data_dir", args.data_dir]
  if args.smoke:
    command.append("--smoke")
  with open(os.path.join(workdir, "log.txt"), "a") as log:
    process = subprocess.run(
        command, stdout=log, stderr=subprocess.STDOUT, env=_worker_env(args.threads),
        check=False)
  return process.returncode


def run_all(jobs: Sequence[tuple[table.Row, int]], args,
            recorded: Sequence[Mapping[str, Any]] = (),
            on_trained: Callable[[], None] = lambda: None) -> list[str]:
  """Runs the unfinished jobs, `args.workers` at a time; returns the failed ones.

  A job is finished when `args.out` holds its result, or `recorded` (result.json dicts
  of an earlier document) one that `is_current`. `on_trained` is called after each run
  this call starts has ended, finished or failed (from the worker threads, one call at a
  time).
  """
  done = {(r["row"], r["seed"]) for r in recorded if is_current(r)}
  pending = [(row, seed) for row, seed in jobs if (row.key, seed) not in done
             and not os.path.exists(os.path.join(run_dir(args.out, row, seed), RESULT_FILE))]
  print(f"{len(jobs) - len(pending)} of {len(jobs)} runs already finished; "
        f"running {len(pending)} with {args.workers} worker(s)", flush=True)
  failed = []
  if args.workers == 0:  # In this process: the smoke test's way, no start-up per run.
    for row, seed in pending:
      run_one(row, seed, args.out, data_dir=args.data_dir, smoke=args.smoke)
      on_trained()
    return failed
  start = time.time()
  lock = threading.Lock()

  def job(row_seed):
    row, seed = row_seed
    if os.path.exists(os.path.join(run_dir(args.out, row, seed), RESULT_FILE)):
      return True  # finished by another command meanwhile
    status = _run_subprocess(row, seed, args)
    ok = status in (0, SKIPPED)
    status = {0: "done", SKIPPED: "skipped (another process is running it)"}.get(
        status, f"FAILED (see {run_dir(args.out, row, seed)}/log.txt)")
    print(f"[{time.time() - start:7.0f}s] {row.key} seed {seed}: {status}", flush=True)
    with lock:
      on_trained()
    return ok

  with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
    for (row, seed), ok in zip(pending, pool.map(job, pending)):
      if not ok:
        failed.append(f"{row.key}/seed_{seed}")
  return failed


def jobs_of(rows: Sequence[table.Row], smoke: bool) -> list[tuple[table.Row, int]]:
  """Every (row, seed) of `rows` (smoke: each row's first seed), seed-major, so that an
  interrupted command has run every row with some seeds."""
  seeds = {row.key: tuple(row.seeds)[:1] if smoke else tuple(row.seeds) for row in rows}
  return [(row, seed) for seed in sorted(set().union(*seeds.values())) for row in rows
          if seed in seeds[row.key]]


def train_table(rows: Sequence[table.Row], command: str, args,
                recorded: Sequence[Mapping[str, Any]] = ()) -> list[str]:
  """Trains every (row, seed) of `jobs_of(rows)` not yet finished in `args.out` or
  `recorded` (`run_all`); returns the failed runs.

  Records `command` in `<out>/commands.txt` and its wall clock in `sessions.jsonl`,
  updated after every run it trains, so that a command stopped early has its record too.
  """
  os.makedirs(args.out, exist_ok=True)
  with open(os.path.join(args.out, COMMANDS_FILE), "a") as f:
    f.write(command + "\n")
  jobs = jobs_of(rows, args.smoke)
  started = datetime.datetime.now(datetime.timezone.utc)
  session = {"command": command, "started": f"{started:%Y-%m-%d %H:%M}", "minutes": 0.0,
             "runs": len(jobs), "trained": 0, "workers": args.workers,
             "cpu": timing.cpu_name()}

  def on_trained():
    session["trained"] += 1
    session["minutes"] = (datetime.datetime.now(datetime.timezone.utc)
                          - started).total_seconds() / 60
    record_session(args.out, session)

  prepare_datasets(rows, args.data_dir, args.smoke)
  return run_all(jobs, args, recorded, on_trained)


def read_sessions(out: str) -> list[dict[str, Any]]:
  """The session records of `<out>/sessions.jsonl` (none if it does not exist)."""
  path = os.path.join(out, SESSIONS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def record_session(out: str, session: Mapping[str, Any]) -> None:
  """Writes `session` into `<out>/sessions.jsonl`, replacing the record of the same
  command and start; the file is replaced whole, so a kill leaves the old or the new."""
  key = lambda s: (s["started"], s["command"])
  sessions = [s for s in read_sessions(out) if key(s) != key(session)] + [dict(session)]
  path = os.path.join(out, SESSIONS_FILE)
  with open(path + ".tmp", "w") as f:
    f.writelines(json.dumps(s) + "\n" for s in sessions)
  os.replace(path + ".tmp", path)
