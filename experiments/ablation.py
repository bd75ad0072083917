r"""Runs the ablation table (`experiments/configs/ablation.py`) x seeds and writes RESULTS.md.

    python -m experiments.ablation --out runs/ablation            # the real run
    python -m experiments.ablation --smoke --out /tmp/smoke       # one tiny step per row
    python -m experiments.ablation --out runs/ablation --report_only

Every (row, seed) trains through `regionatt_jax.train.loop.train_and_evaluate` in its
own directory `<out>/<row key>/seed_<s>`, in parallel worker processes (`--workers`,
one XLA thread each with `--threads 1`). A run is finished when its `result.json`
exists; finished runs are skipped, so the command resumes after an interruption (an
unfinished run resumes from its own checkpoint). After training, the run's final
checkpoint is restored to measure what the training job does not: parameters, bag AUC
and instance localization (bags), and, for seed 0, example attention maps for figures.
The report (tables with mean +- std over seeds, figures, versions, the command) goes to
`--results_md` and `--results_dir`.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from experiments.configs import ablation as table

RESULT_FILE = "result.json"
LOCK_FILE = "running.pid"
SESSIONS_FILE = "sessions.jsonl"  # one line per training command: start, minutes, runs
SKIPPED = 3  # exit status of a worker that found its run taken by another process
EXAMPLES_FILE = "examples.npz"
NUM_EXAMPLES = 8
# glibc otherwise returns big buffers to the OS after every step (see PERF_NOTES.md).
MALLOC_TUNABLES = "glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=4294967296"


# ----------------------------------------------------------------------------- configs


def rows_by_key() -> dict[str, table.Row]:
  return {row.key: row for row in table.ROWS + table.REAL_ROWS}


def make_config(row: table.Row, seed: int, *, data_dir: str, smoke: bool = False):
  """The training config of one (row, seed).

  Args:
    row: a row of the table.
    seed: the run's seed (model init, data order).
    data_dir: tfds data directory of the datasets (bags of a smaller training set live
      in a subdirectory, see `bag_data_dir`).
    smoke: the tiny dataset and one step instead of the real settings.

  Returns:
    A validated-shape `ml_collections.ConfigDict` (validation happens in training).
  """
  from regionatt_jax.train import config as config_lib  # pylint: disable=g-import-not-at-top
  config = config_lib.base_config()
  overrides = {**table.COMMON, **table.TABLES[row.table], **row.overrides}
  if smoke:
    overrides.update({**table.SMOKE[row.table], **table.SMOKE_COMMON})
  for dotted, value in overrides.items():
    *parents, leaf = dotted.split(".")
    node = config
    for parent in parents:
      node = node[parent]
    if leaf not in node and dotted != "model.kwargs":
      raise ValueError(f"row {row.name!r}: unknown config key {dotted!r}")
    node[leaf] = value
  config.seed = seed
  config.train.eval_every = config.train.steps
  config.train.checkpoint_every = config.train.steps
  config.dataset.data_dir = data_dir
  if row.train_examples is not None and not smoke:
    config.dataset.data_dir = bag_data_dir(data_dir, row.train_examples)
  return config


def bag_data_dir(data_dir: str, train_examples: int) -> str:
  """Where `digit_bags/16px` with only `train_examples` training bags is built."""
  return os.path.join(data_dir, "digit_bags_subsets", f"train_{train_examples}")


def prepare_bag_subset(data_dir: str, train_examples: int) -> str:
  """Builds `digit_bags/16px` with `train_examples` training bags; returns its data_dir.

  The training job reads datasets by registered name, and the registered `16px` config
  has 2000 training bags. So this builds a custom config (same generator, seed,
  validation and test bags; fewer training bags) under its own name, then moves it to
  the tfds path of `digit_bags/16px` inside a data_dir of its own, where
  `dataset.name = "digit_bags/16px"` reads it. A no-op when already built.
  """
  from regionatt_jax import data  # pylint: disable=g-import-not-at-top
  from regionatt_jax.data import digit_bags  # pylint: disable=g-import-not-at-top
  subset_dir = bag_data_dir(data_dir, train_examples)
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
  from regionatt_jax import data  # pylint: disable=g-import-not-at-top
  for row in rows:
    config = make_config(row, 0, data_dir=data_dir, smoke=smoke)
    if row.train_examples is not None and not smoke:
      prepare_bag_subset(data_dir, row.train_examples)
    else:
      data.prepare(config.dataset.name, data_dir)


# ------------------------------------------------------------------------ measurements


def run_dir(out: str, row: table.Row, seed: int) -> str:
  return os.path.join(out, row.key, f"seed_{seed}")


def restore_state(config, workdir: str):
  """The train state of the latest checkpoint in `workdir`, as `train_and_evaluate` left it."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from regionatt_jax import data  # pylint: disable=g-import-not-at-top
  from regionatt_jax import nn as ra_nn  # pylint: disable=g-import-not-at-top
  from regionatt_jax.train import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from regionatt_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top
  from regionatt_jax.train import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  spec = data.dataset_spec(config.dataset.name)
  model = ra_nn.build_model(config.model, spec.num_classes, jnp.dtype(config.train.compute_dtype))
  mesh = sharding_lib.make_mesh(config.mesh.model_axis_size)
  abstract = state_lib.abstract_train_state(config, model, (1, *spec.example_shape), mesh)
  manager = workdir_lib.checkpoint_manager(workdir, config)
  restored = workdir_lib.restore_latest(workdir, manager, abstract, move_damaged=False)
  manager.close()
  if restored is None:
    raise ValueError(f"workdir={workdir!r} has no checkpoint to restore")
  return restored[1], mesh


def _attention_outputs(intermediates, image_hw):
  """What the figures need from a model's sown attention (None where it has none)."""
  from regionatt_jax import nn as ra_nn  # pylint: disable=g-import-not-at-top
  outputs = {"map": ra_nn.attention_maps(intermediates, image_hw)
             if ra_nn.has_attention_map(intermediates) else None}
  for name in (ra_nn.REGION_WEIGHTS, ra_nn.INSTANCE_WEIGHTS):
    try:
      outputs[name] = ra_nn.topmost(intermediates, name)[0]
    except ValueError:
      outputs[name] = None
  return outputs


def _test_batches(config):
  from regionatt_jax import data  # pylint: disable=g-import-not-at-top
  return data.make_iterator(config.dataset.name, "test", data_dir=config.dataset.data_dir,
                            global_batch_size=config.train.eval_batch_size, seed=0,
                            shuffle=False, num_epochs=1, drop_remainder=False)


def _predict_fn(state):
  """Jitted `batch -> (logits, attention outputs)` of the restored model."""
  import jax  # pylint: disable=g-import-not-at-top
  variables = {"params": state.params, **({"batch_stats": state.batch_stats}
                                          if state.batch_stats else {})}

  def predict(batch):
    logits, collections = state.apply_fn(
        variables, batch["image"], train=False, mutable=["intermediates"],
        **({"mask": batch["mask"]} if "mask" in batch else {}))
    return logits, _attention_outputs(collections.get("intermediates", {}),
                                      batch["image"].shape[-3:-1])

  predict = jax.jit(predict)
  return lambda batch: jax.device_get(predict(batch))


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
  import regionatt_jax as ra  # pylint: disable=g-import-not-at-top
  from regionatt_jax.train import metrics  # pylint: disable=g-import-not-at-top
  boxes = np.asarray(boxes, np.float32)
  centres = (boxes[:, :2] + boxes[:, 2:]) / 2
  cells = np.minimum((centres * np.array(grid) / np.array(image_hw)).astype(int),
                     np.array(grid) - 1)
  weights = np.zeros((len(boxes), grid[0] * grid[1]), np.float32)
  weights[np.arange(len(boxes)), cells[:, 0] * grid[1] + cells[:, 1]] = 1.0
  maps = ra.attention_map(weights, grid, image_shape=image_hw)
  return float(np.mean(metrics.pointing_game_hits(maps, boxes)))


def table_pointing_ceiling(rows: Sequence[table.Row], data_dir: str) -> str:
  """A sentence giving `pointing_ceiling` on the test split of the rows' dataset."""
  grids = {row.grid for row in rows if row.grid}
  if len(grids) != 1:
    return ""
  (grid,) = grids
  config = make_config(rows[0], 0, data_dir=data_dir)
  try:
    batches = list(_test_batches(config))
  except Exception:  # pylint: disable=broad-except  (the report must not need the data)
    return ""
  boxes = np.concatenate([batch["box"] for batch in batches])
  image_hw = batches[0]["image"].shape[1:3]
  ceiling = pointing_ceiling(boxes, image_hw, grid)
  return (f"- Pointing-game ceiling of a {grid[0]}x{grid[1]} region map here: "
          f"{100 * ceiling:.1f} % (a map maximal on the region that holds the digit's "
          "centre points at that region's centre, which can lie outside a digit smaller "
          "than a region).\n")


def instance_hits(weights: np.ndarray, mask: np.ndarray, instance_labels: np.ndarray,
                  target: int) -> np.ndarray:
  """Whether the most attended real instance of each bag is a `target` instance.

  Args:
    weights: `(B, N)` instance weights.
    mask: `(B, N)` bool, True for real instances.
    instance_labels: `(B, N)` digit labels.
    target: the label that makes a bag positive.

  Returns:
    `(B,)` bool.
  """
  masked = np.where(mask, weights, -np.inf)
  top = np.argmax(masked, axis=-1)
  return np.take_along_axis(instance_labels, top[:, None], axis=-1)[:, 0] == target


def bag_metrics(state, config, *, keep_example: bool
                ) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """Test bag AUC, accuracy and instance localization of the trained MIL model.

  Instance localization is the share of positive test bags whose most attended
  instance is a target digit; `chance_localization` is what picking a uniformly random
  real instance would score (the mean fraction of targets in a positive bag).
  """
  from sklearn.metrics import roc_auc_score  # pylint: disable=g-import-not-at-top
  from regionatt_jax.data import digit_bags  # pylint: disable=g-import-not-at-top
  predict = _predict_fn(state)
  target = {c.name: c for c in digit_bags.CONFIGS}[config.dataset.name.split("/")[1]]
  target = target.target_digit
  scores, labels, hits, chance = [], [], [], []
  example = {}
  for batch in _test_batches(config):
    logits, outputs = predict({"image": batch["image"], "mask": batch["mask"]})
    weights = np.asarray(outputs["instance_weights"])
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


def image_examples(state, config) -> dict[str, np.ndarray]:
  """The first test images with their boxes, labels, predictions and attention."""
  batch = next(iter(_test_batches(config)))
  batch = {key: value[:NUM_EXAMPLES] for key, value in batch.items()}
  logits, outputs = _predict_fn(state)(batch)
  example = {"image": batch["image"], "box": batch["box"], "label": batch["label"],
             "prediction": np.argmax(logits, -1)}
  for name in ("map", "region_weights"):
    if outputs[name] is not None:
      example[name] = np.asarray(outputs[name])
  return example


def parameter_count(state) -> int:
  import jax  # pylint: disable=g-import-not-at-top
  return int(sum(leaf.size for leaf in jax.tree.leaves(state.params)))


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
  from regionatt_jax.train import loop  # pylint: disable=g-import-not-at-top
  config = make_config(row, seed, data_dir=data_dir, smoke=smoke)
  summary = loop.train_and_evaluate(config, workdir)
  state, _ = restore_state(config, workdir)
  result = {
      "row": row.key, "name": row.name, "table": row.table, "family": row.family,
      "seed": seed, "train_examples": row.train_examples,
      "steps": config.train.steps, "batch_size": config.train.global_batch_size,
      "dataset": config.dataset.name,
      "test_accuracy": summary["test_accuracy"],
      "test_pointing_game": summary["test_pointing_game"],
      "final_train_loss": summary["final_train_loss"],
      "wall_time_s": summary["wall_time_s"],
      "images_per_sec": summary["train_images_per_sec"],
      "params": parameter_count(state),
  }
  keep_example = seed == min(table.SEEDS)
  if row.table == "bags":
    metrics, example = bag_metrics(state, config, keep_example=keep_example)
    result.update(metrics)
  else:
    example = image_examples(state, config) if keep_example else {}
  if example:
    np.savez_compressed(os.path.join(workdir, EXAMPLES_FILE), **example)
  # Written last: its presence marks the run finished.
  with open(path + ".tmp", "w") as f:
    json.dump(result, f, indent=2)
  os.replace(path + ".tmp", path)
  return result


# ----------------------------------------------------------------------------- running


def _worker_env(threads: int) -> dict[str, str]:
  env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES, TF_CPP_MIN_LOG_LEVEL="2")
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


def run_all(jobs: Sequence[tuple[table.Row, int]], args) -> list[str]:
  """Runs the unfinished jobs, `args.workers` at a time; returns the failed ones."""
  pending = [(row, seed) for row, seed in jobs
             if not os.path.exists(os.path.join(run_dir(args.out, row, seed), RESULT_FILE))]
  print(f"{len(jobs) - len(pending)} of {len(jobs)} runs already finished; "
        f"running {len(pending)} with {args.workers} worker(s)", flush=True)
  failed = []
  if args.workers == 0:  # In this process: the smoke test's way, no start-up per run.
    for row, seed in pending:
      run_one(row, seed, args.out, data_dir=args.data_dir, smoke=args.smoke)
    return failed
  start = time.time()

  def job(row_seed):
    row, seed = row_seed
    if os.path.exists(os.path.join(run_dir(args.out, row, seed), RESULT_FILE)):
      return True  # finished by another command meanwhile
    status = _run_subprocess(row, seed, args)
    ok = status in (0, SKIPPED)
    status = {0: "done", SKIPPED: "skipped (another process is running it)"}.get(
        status, f"FAILED (see {run_dir(args.out, row, seed)}/log.txt)")
    print(f"[{time.time() - start:7.0f}s] {row.key} seed {seed}: {status}", flush=True)
    return ok

  with concurrent.futures.ThreadPoolExecutor(args.workers) as pool:
    for (row, seed), ok in zip(pending, pool.map(job, pending)):
      if not ok:
        failed.append(f"{row.key}/seed_{seed}")
  return failed


# ------------------------------------------------------------------------------ report


def collect(out: str, rows: Sequence[table.Row], seeds: Sequence[int]) -> list[dict[str, Any]]:
  """The finished `result.json`s of the table, in row order."""
  results = []
  for row in rows:
    for seed in seeds:
      path = os.path.join(run_dir(out, row, seed), RESULT_FILE)
      if os.path.exists(path):
        with open(path) as f:
          results.append(json.load(f))
  return results


def summarize(results: Sequence[Mapping[str, Any]], metrics: Sequence[str]
              ) -> dict[str, dict[str, Any]]:
  """Per row key: `n`, and mean and sample std (ddof=1; 0 for one seed) of each metric."""
  by_row: dict[str, list[Mapping[str, Any]]] = {}
  for result in results:
    by_row.setdefault(result["row"], []).append(result)
  summary = {}
  for key, runs in by_row.items():
    entry = {"n": len(runs), "name": runs[0]["name"], "table": runs[0]["table"],
             "family": runs[0]["family"], "train_examples": runs[0]["train_examples"],
             "seeds": sorted(r["seed"] for r in runs)}
    for metric in metrics:
      values = np.array([r[metric] for r in runs if r.get(metric) is not None], np.float64)
      if len(values):
        entry[metric] = {"mean": float(values.mean()),
                         "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                         "min": float(values.min()), "max": float(values.max())}
    summary[key] = entry
  return summary


METRICS = ("test_accuracy", "test_pointing_game", "params", "images_per_sec", "wall_time_s",
           "final_train_loss", "test_auc", "test_bag_accuracy", "instance_localization",
           "chance_localization")


def _pm(entry: Mapping[str, Any], metric: str, scale: float = 1.0, digits: int = 1) -> str:
  if metric not in entry:
    return "-"
  value = entry[metric]
  return f"{scale * value['mean']:.{digits}f} ± {scale * value['std']:.{digits}f}"


def _mean(entry, metric, digits=0, statistic="mean") -> str:
  return f"{entry[metric][statistic]:.{digits}f}" if metric in entry else "-"


def image_table(summary: Mapping[str, Any], rows: Sequence[table.Row]) -> str:
  lines = ["| method | family | test accuracy (%) | pointing game (%) | params | "
           "train images/s (best seed) | wall time / run (s, fastest seed) | seeds |",
           "|---|---|---|---|---|---|---|---|"]
  for row in rows:
    entry = summary.get(row.key)
    if entry is None:
      lines.append(f"| {row.name} | {row.family} | not run | | | | | 0 |")
      continue
    lines.append(
        f"| {row.name} | {row.family} | {_pm(entry, 'test_accuracy', 100)} | "
        f"{_pm(entry, 'test_pointing_game', 100)} | {_mean(entry, 'params')} | "
        f"{_mean(entry, 'images_per_sec', statistic='max')} | "
        f"{_mean(entry, 'wall_time_s', statistic='min')} | {entry['n']} |")
  return "\n".join(lines)


def bag_table(summary: Mapping[str, Any], rows: Sequence[table.Row]) -> str:
  lines = ["| pooling | training bags | test AUC | bag accuracy (%) | instance "
           "localization (%) | chance (%) | params | wall time / run (s, fastest seed) | "
           "seeds |",
           "|---|---|---|---|---|---|---|---|---|"]
  for row in rows:
    entry = summary.get(row.key)
    if entry is None:
      lines.append(f"| {row.name} | {row.train_examples} | not run | | | | | | 0 |")
      continue
    lines.append(
        f"| {row.name} | {row.train_examples} | {_pm(entry, 'test_auc', 1, 3)} | "
        f"{_pm(entry, 'test_bag_accuracy', 100)} | "
        f"{_pm(entry, 'instance_localization', 100)} | "
        f"{_pm(entry, 'chance_localization', 100)} | "
        f"{_mean(entry, 'params')} | {_mean(entry, 'wall_time_s', statistic='min')} | "
        f"{entry['n']} |")
  return "\n".join(lines)


def compare(summary: Mapping[str, Any], rows: Sequence[table.Row], metric: str,
            baseline: table.Row, scale: float = 100.0, digits: int = 1,
            unit: str = " points") -> list[str]:
  """Plain sentences: the best row, and each row against the baseline and the spread.

  A difference "exceeds the spread" when it is larger than the sum of the two rows'
  seed standard deviations (their mean +- std intervals do not overlap).
  """
  done = [(row, summary[row.key]) for row in rows
          if row.key in summary and metric in summary[row.key]]
  if not done:
    return []
  best_row, best = max(done, key=lambda item: item[1][metric]["mean"])
  label = {"test_auc": "test AUC"}.get(metric, metric.replace("_", " "))
  lines = [f"- Best {label}: **{best_row.name}**, "
           f"{scale * best[metric]['mean']:.{digits}f} ± "
           f"{scale * best[metric]['std']:.{digits}f}."]
  base = summary.get(baseline.key)
  if base is None or metric not in base:
    return lines
  for row, entry in done:
    if row is baseline:
      continue
    delta = entry[metric]["mean"] - base[metric]["mean"]
    spread = entry[metric]["std"] + base[metric]["std"]
    if min(entry["n"], base["n"]) < 2:
      verdict = "one seed so far, no spread to compare with"
    else:
      verdict = ("exceeds" if abs(delta) > spread else "is within") + (
          f" the seed spread (sum of stds {scale * spread:.{digits}f})")
    lines.append(f"- {row.name} vs {baseline.name}: {scale * delta:+.{digits}f}{unit}; "
                 f"{verdict}.")
  return lines


def clutter_gaps(summary: Mapping[str, Any]) -> str:
  """A table of each attention row's accuracy gain over the plain CNN, per dataset."""
  names = [row.name for row in table.HEAVY_ROWS[1:]]
  lines = ["| accuracy gain over plain CNN (points) | " + " | ".join(names) + " |",
           "|---|" + "---|" * len(names)]
  for name_of_table, _, rows in table.IMAGE_TABLES:
    by_name = {row.name: summary.get(row.key, {}) for row in rows}
    base = by_name["plain CNN"].get("test_accuracy")
    cells = []
    for name in names:
      entry = by_name.get(name, {}).get("test_accuracy")
      if base is None or entry is None:
        cells.append("-")
        continue
      cells.append(f"{100 * (entry['mean'] - base['mean']):+.1f} "
                   f"(spread {100 * (entry['std'] + base['std']):.1f})")
    lines.append(f"| {table.TABLES[name_of_table]['dataset.name']} | " + " | ".join(cells)
                 + " |")
  return "\n".join(lines) + "\n"


def localization_surprises(summary: Mapping[str, Any], rows: Sequence[table.Row]
                           ) -> list[str]:
  """Rows whose attention points at the digit much less often than they classify it."""
  lines = []
  for row in rows:
    entry = summary.get(row.key, {})
    if "test_pointing_game" in entry and "test_accuracy" in entry:
      accuracy = entry["test_accuracy"]["mean"]
      pointing = entry["test_pointing_game"]["mean"]
      if pointing < accuracy - 0.2:
        lines.append(f"- {row.name} classifies {100 * accuracy:.1f} % correctly, but its "
                     f"attention maximum falls on the digit only {100 * pointing:.1f} % "
                     f"of the time.")
  return lines


def _examples(out: str, row: table.Row) -> dict[str, np.ndarray] | None:
  path = os.path.join(run_dir(out, row, min(table.SEEDS)), EXAMPLES_FILE)
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    return dict(f)


def make_figures(out: str, summary: Mapping[str, Any], results_dir: str) -> list[tuple[str, str]]:
  """Writes the bar charts and one attention panel per family; returns (caption, path)."""
  from regionatt_jax import viz  # pylint: disable=g-import-not-at-top
  figures = []

  def save(fig, name: str, caption: str):
    figures.append((caption, viz.save_figure(fig, os.path.join(results_dir, name))))

  for name_of_table, _, rows in table.IMAGE_TABLES:
    name = f"{name_of_table}_accuracy.png"
    title = table.TABLES[name_of_table]["dataset.name"]
    done = [row for row in rows if "test_accuracy" in summary.get(row.key, {})]
    if done:
      save(viz.bar_chart([row.name for row in done],
                         [100 * summary[row.key]["test_accuracy"]["mean"] for row in done],
                         [100 * summary[row.key]["test_accuracy"]["std"] for row in done],
                         ylabel="test accuracy (%)",
                         title=f"{title}: mean ± std over seeds"),
           name, f"Test accuracy on {title}, mean ± std over seeds.")
  bags = [row for row in table.BAG_ROWS if "test_auc" in summary.get(row.key, {})]
  if bags:
    save(viz.bar_chart([f"{row.name.split()[0]} n={row.train_examples}" for row in bags],
                       [summary[row.key]["test_auc"]["mean"] for row in bags],
                       [summary[row.key]["test_auc"]["std"] for row in bags],
                       ylabel="test AUC", title="digit_bags/16px: mean ± std over seeds",
                       ylim=(0.4, 1.0)),
         "bags_auc.png", "Bag AUC by pooling and training-set size, mean ± std over seeds.")

  for row in table.CLUTTERED_ROWS + table.HEAVY_ROWS + table.LARGE_ROWS:
    example = _examples(out, row)
    if example is None or "map" not in example:
      continue
    titles = [f"y={int(label)} pred={int(pred)}"
              for label, pred in zip(example["label"], example["prediction"])]
    save(viz.attention_grid(example["image"][:4], example["map"][:4], grid=row.grid,
                            boxes=example["box"][:4], titles=titles[:4]),
         f"attention_{row.key}.png",
         f"{row.name} ({row.family}) on {row.table}: attention overlay, ground-truth box "
         f"(green), most attended region (red); seed {min(table.SEEDS)}, first test images.")
    if row.family == "multiscale" and "region_weights" in example:
      grids = row.overrides["model.kwargs"]["head_kwargs"]["grids"]
      finest = example["region_weights"][0]
      levels = [viz.coarser_weights(finest, grids[-1], grid) for grid in grids]
      save(viz.multiscale_figure(example["image"][0], levels, grids, box=example["box"][0]),
           f"levels_{row.key}.png",
           f"{row.name} on {row.table}: region weights level by level (coarse levels are "
           f"sums of their finer regions' weights).")
  for row in table.BAG_ROWS:
    example = _examples(out, row)
    if example is None or row.train_examples != max(table.BAG_TRAIN_SIZES):
      continue
    if row.overrides["model.kwargs"]["pooling"] in ("attention", "gated"):
      save(viz.bag_figure(example["bag"], example["weights"], mask=example["mask"],
                          instance_labels=example["instance_labels"], target=9),
           f"bag_{row.key}.png",
           f"{row.name}, {row.train_examples} training bags: a positive test bag, each "
           f"instance titled label: weight; target 9s framed green, the most attended red.")
  return figures


def environment() -> dict[str, str]:
  import flax  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import optax  # pylint: disable=g-import-not-at-top
  cpu = "unknown"
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = f"{names[0] if names else 'unknown'} ({os.cpu_count()} cores)"
  return {"python": platform.python_version(), "jax": jax.__version__,
          "flax": flax.__version__, "optax": optax.__version__, "numpy": np.__version__,
          "machine": cpu, "platform": platform.platform()}


def _session_text(out: str) -> str:
  """How long the commands that trained the runs took (from `<out>/sessions.jsonl`)."""
  path = os.path.join(out, SESSIONS_FILE)
  if not os.path.exists(path):
    return ""
  with open(path) as f:
    sessions = [json.loads(line) for line in f if line.strip()]
  return "Wall clock of the training command: " + ", then ".join(
      f"{s['minutes']:.1f} min ({s['runs']} runs, {s['workers']} workers, started "
      f"{s['started']} UTC)" for s in sessions) + ". "


def write_report(out: str, results_md: str, results_dir: str, command: str,
                 data_dir: str) -> dict:
  """Collects the finished runs and writes RESULTS.md, figures and metrics.json."""
  results = collect(out, table.ROWS + table.REAL_ROWS, table.SEEDS)
  summary = summarize(results, METRICS)
  os.makedirs(results_dir, exist_ok=True)
  figures = make_figures(out, summary, results_dir)
  env = environment()
  with open(os.path.join(results_dir, "metrics.json"), "w") as f:
    json.dump({"environment": env, "command": command, "seeds": list(table.SEEDS),
               "summary": summary, "runs": results}, f, indent=1)
  relative = lambda path: os.path.relpath(path, os.path.dirname(os.path.abspath(results_md)))
  steps = {name: "/".join(str(n) for n in sorted({r["steps"] for r in results
                                                   if r["table"] == name})) or "-"
           for name in table.TABLES}
  notes_path = os.path.join(results_dir, "NOTES.md")
  notes = open(notes_path).read() if os.path.exists(notes_path) else ""
  text = [
      "# Results: which attention helps, and does it look at the right place\n",
      f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by\n",
      f"    {command}\n",
      f"from {len(results)} finished runs (seeds {list(table.SEEDS)}; the table and every "
      "setting are in `experiments/configs/ablation.py`). Environment: " +
      ", ".join(f"{k} {v}" for k, v in env.items()) + ".\n",
      "Each run trains with `regionatt_jax.train.loop.train_and_evaluate` (AdamW, warmup "
      "and cosine schedule, gradient clipping; batch 32, bags: batch 16) for "
      f"{steps['cluttered']} steps (each image table) and {steps['bags']} (bags); these "
      "are short runs sized for 2 CPU cores, so the numbers rank "
      "methods early in training rather than at convergence. "
      f"{_session_text(out)}"
      "Mean ± sample std over seeds. Pointing game: the centre of the attention map's "
      "maximum lies inside the digit's box (models without a spatial map: -). Train "
      "images/s: steady state after compilation, one XLA thread per run, with another "
      "run in parallel. Wall time: the whole run, including data loading, "
      "compilation and evaluation of 2000 validation and 2000 test images.\n",
  ]
  if notes:
    text += ["## Summary\n", notes.strip() + "\n"]
  bullets = lambda lines: "\n".join(lines) + "\n"
  for _, title, rows in table.IMAGE_TABLES:
    text += [f"## {title}\n", image_table(summary, rows) + "\n",
             bullets(compare(summary, rows, "test_accuracy", rows[0])
                     + localization_surprises(summary, rows))
             + table_pointing_ceiling(rows, data_dir)]
  text += ["## Does the gap grow with clutter?\n",
           "Mean gain over the plain CNN of the same table; spread = sum of the two rows' "
           "seed standard deviations.\n", clutter_gaps(summary)]
  text += ["## digit_bags/16px (multiple-instance learning)\n",
           bag_table(summary, table.BAG_ROWS) + "\n"]
  for size in table.BAG_TRAIN_SIZES:
    rows = [row for row in table.BAG_ROWS if row.train_examples == size]
    mean_row = next(row for row in rows if row.name.startswith("mean"))
    text += [f"{size} training bags, test AUC against mean pooling:\n",
             bullets(compare(summary, rows, "test_auc", mean_row, scale=1.0, digits=3,
                             unit=""))]
  for name in table.REAL_DATASETS:
    rows = [row for row in table.REAL_ROWS if row.table == name]
    if any(row.key in summary for row in rows):
      text += [f"## {name}\n", image_table(summary, rows) + "\n",
               bullets(compare(summary, rows, "test_accuracy", rows[0]))]
  text += ["## Figures\n"]
  text += [f"{caption}\n\n![{os.path.basename(path)}]({relative(path)})\n" for caption, path
           in figures]
  with open(results_md, "w") as f:
    f.write("\n".join(text).replace("\n\n\n", "\n\n"))
  return summary


# -------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None = None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/ablation", help="directory of the runs")
  parser.add_argument("--data_dir", default="",
                      help="tfds data directory ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  parser.add_argument("--smoke", action="store_true",
                      help="one step per row on the tiny datasets, seed 0 only")
  parser.add_argument("--workers", type=int, default=2,
                      help="parallel runs (0: in this process, one after another)")
  parser.add_argument("--threads", type=int, default=1, choices=(1, 2),
                      help="XLA threads per worker (2: XLA's default, all cores)")
  parser.add_argument("--tables", default="cluttered,heavy,large,bags",
                      help="comma-separated tables to run")
  parser.add_argument("--rows", default="",
                      help="regular expression: only rows whose key it finds (default all)")
  parser.add_argument("--results_md", default="RESULTS.md")
  parser.add_argument("--results_dir", default="results")
  parser.add_argument("--report_only", action="store_true", help="only write the report")
  parser.add_argument("--one", help=argparse.SUPPRESS)  # worker: a row key
  parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.smoke:  # Never overwrite the real report with a smoke one.
    args.results_md = args.results_md if args.results_md != "RESULTS.md" else os.path.join(
        args.out, "RESULTS.md")
    args.results_dir = args.results_dir if args.results_dir != "results" else os.path.join(
        args.out, "results")
  if args.workers < 0:
    parser.error(f"--workers must be >= 0, got {args.workers}")
  unknown = set(args.tables.split(",")) - set(table.TABLES)
  if unknown:
    parser.error(f"--tables: unknown {sorted(unknown)}; known {sorted(table.TABLES)}")
  return args


def selected_rows(tables: Sequence[str], smoke: bool, pattern: str = "") -> list[table.Row]:
  """The rows of `tables` whose key matches `pattern`; in smoke mode one training-set
  size of the bag table."""
  rows = [row for row in table.ROWS + table.REAL_ROWS
          if row.table in tables and re.search(pattern, row.key)]
  if smoke:
    rows = [row for row in rows if row.train_examples in (None, table.BAG_TRAIN_SIZES[0])]
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  from regionatt_jax import data  # pylint: disable=g-import-not-at-top
  args.data_dir = data.resolve_data_dir(args.data_dir)
  if args.one:
    result = run_one(rows_by_key()[args.one], args.seed, args.out, data_dir=args.data_dir,
                     smoke=args.smoke)
    return SKIPPED if result is None else 0
  command = " ".join(["python -m experiments.ablation",
                      *(argv if argv is not None else sys.argv[1:])])
  command_file = os.path.join(args.out, "commands.txt")
  if not args.report_only:
    os.makedirs(args.out, exist_ok=True)
    with open(command_file, "a") as f:  # Every command that added runs to `out`.
      f.write(command + "\n")
    rows = selected_rows(args.tables.split(","), args.smoke, args.rows)
    seeds = table.SEEDS[:1] if args.smoke else table.SEEDS
    # Seed-major order: an interrupted run still has every row with some seeds.
    jobs = [(row, seed) for seed in seeds for row in rows]
    started = datetime.datetime.now(datetime.timezone.utc)
    prepare_datasets(rows, args.data_dir, args.smoke)
    failed = run_all(jobs, args)
    with open(os.path.join(args.out, SESSIONS_FILE), "a") as f:
      f.write(json.dumps({
          "command": command, "started": f"{started:%Y-%m-%d %H:%M}",
          "minutes": (datetime.datetime.now(datetime.timezone.utc)
                      - started).total_seconds() / 60,
          "runs": len(jobs), "workers": args.workers}) + "\n")
    if failed:
      print(f"failed runs: {failed}", flush=True)
      return 1
  if os.path.exists(command_file):  # The commands that ran the table, not the report's.
    with open(command_file) as f:
      command = "\n    ".join(dict.fromkeys(line.strip() for line in f if line.strip()))
  write_report(args.out, args.results_md, args.results_dir, command, args.data_dir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
