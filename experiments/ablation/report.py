"""The report of the ablation: metrics.json, tables and figures, RESULTS.md.

`build_document` gathers the finished runs of `--out` into one document (environment,
commands, sessions, per-row summary, every run), saved as `<results_dir>/metrics.json`;
`write_report` renders RESULTS.md and the figures from that document, so a report can be
re-rendered from metrics.json alone (the example attention figures then stay as they
were drawn: their inputs live in the runs).
"""

from __future__ import annotations

import datetime
import functools
import json
import os
from typing import Any, Callable, Mapping, Sequence

import flax
import jax
import numpy as np
import optax

from experiments import timing
from experiments.ablation import measure
from experiments.ablation import run
from experiments.configs import ablation as table
from regionatt_jax import viz
from regionatt_jax.nn.models import HEAD_DEFAULTS

METRICS_FILE = "metrics.json"
METRICS = ("test_accuracy", "test_pointing_game", "params", "images_per_sec", "wall_time_s",
           "final_train_loss", "test_auc", "test_bag_accuracy", "instance_localization",
           "chance_localization")


def collect_runs(out: str, rows: Sequence[table.Row], seeds: Sequence[int]
                 ) -> list[dict[str, Any]]:
  """The finished `result.json`s of the table, in row order."""
  results = []
  for row in rows:
    for seed in seeds:
      path = os.path.join(run.run_dir(out, row, seed), run.RESULT_FILE)
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


def _table(summary: Mapping[str, Any], rows: Sequence[table.Row], header: Sequence[str],
           label, cells) -> str:
  """A markdown table: per row its `label(row)` cells, then `cells(entry)` of its
  summary and the number of seeds (or "not run")."""
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    entry = summary.get(row.key)
    if entry is None:
      values = ["not run"] + [""] * (len(header) - len(label(row)) - 2) + ["0"]
    else:
      values = [*cells(entry), str(entry["n"])]
    lines.append("| " + " | ".join([*label(row), *values]) + " |")
  return "\n".join(lines)


def image_table(summary: Mapping[str, Any], rows: Sequence[table.Row]) -> str:
  return _table(
      summary, rows,
      ["method", "family", "test accuracy (%)", "pointing game (%)", "params",
       "train images/s (best seed)", "wall time / run (s, fastest seed)", "seeds"],
      lambda row: [row.name, row.family],
      lambda entry: [_pm(entry, "test_accuracy", 100), _pm(entry, "test_pointing_game", 100),
                     _mean(entry, "params"), _mean(entry, "images_per_sec", statistic="max"),
                     _mean(entry, "wall_time_s", statistic="min")])


def bag_table(summary: Mapping[str, Any], rows: Sequence[table.Row]) -> str:
  return _table(
      summary, rows,
      ["pooling", "training bags", "test AUC", "bag accuracy (%)",
       "instance localization (%)", "chance (%)", "params",
       "wall time / run (s, fastest seed)", "seeds"],
      lambda row: [row.name, str(row.train_examples)],
      lambda entry: [_pm(entry, "test_auc", 1, 3), _pm(entry, "test_bag_accuracy", 100),
                     _pm(entry, "instance_localization", 100),
                     _pm(entry, "chance_localization", 100), _mean(entry, "params"),
                     _mean(entry, "wall_time_s", statistic="min")])


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
  for name_of_table, rows in table.IMAGE_TABLES:
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
    lines.append(f"| {table.dataset_of(name_of_table)} | " + " | ".join(cells) + " |")
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


def table_pointing_ceiling(rows: Sequence[table.Row], data_dir: str) -> str:
  """A sentence giving `measure.pointing_ceiling` on the test split of the rows' dataset."""
  grids = {row.grid for row in rows if row.grid}
  if len(grids) != 1:
    return ""
  (grid,) = grids
  try:
    ceiling = measure.test_pointing_ceiling(table.make_config(rows[0], 0, data_dir=data_dir),
                                            grid)
  except Exception:  # pylint: disable=broad-except  (the report must not need the data)
    return ""
  return (f"- Pointing-game ceiling of a {grid[0]}x{grid[1]} region map here: "
          f"{100 * ceiling:.1f} % (a map maximal on the region that holds the digit's "
          "centre points at that region's centre, which can lie outside a digit smaller "
          "than a region).\n")


def _examples(out: str | None, row: table.Row) -> dict[str, np.ndarray] | None:
  """The figure examples of `row`'s first seed in `out` (None: not there, or no `out`)."""
  path = out and os.path.join(run.run_dir(out, row, min(table.SEEDS)), run.EXAMPLES_FILE)
  if not path or not os.path.exists(path):
    return None
  with np.load(path) as f:
    return dict(f)


def _model_kwargs(row: table.Row) -> Mapping[str, Any]:
  return table.make_config(row, 0, data_dir="").model.kwargs


def make_figures(out: str | None, summary: Mapping[str, Any], results_dir: str
                 ) -> list[tuple[str, str]]:
  """Draws the bar charts and one attention panel per row with a map; `(caption, path)`s.

  Args:
    out: the runs, for the attention panels; None keeps the panels already in
      `results_dir`.
    summary: `summarize`'s per-row summary.
    results_dir: where the PNGs go.
  """
  figures = []

  def save(name: str, caption: str, draw: Callable[[], Any] | None) -> None:
    """Saves the figure `draw()` as `name`; without `draw` and `out`, keeps an earlier one."""
    path = os.path.join(results_dir, name)
    if draw is not None:
      figures.append((caption, viz.save_figure(draw(), path)))
    elif out is None and os.path.exists(path):
      figures.append((caption, path))

  for name_of_table, rows in table.IMAGE_TABLES:
    title = table.dataset_of(name_of_table)
    done = [row for row in rows if "test_accuracy" in summary.get(row.key, {})]
    if done:
      save(f"{name_of_table}_accuracy.png", f"Test accuracy on {title}, mean ± std over seeds.",
           functools.partial(
               viz.bar_chart, [row.name for row in done],
               [100 * summary[row.key]["test_accuracy"]["mean"] for row in done],
               [100 * summary[row.key]["test_accuracy"]["std"] for row in done],
               ylabel="test accuracy (%)", title=f"{title}: mean ± std over seeds"))
  bags = [row for row in table.BAG_ROWS if "test_auc" in summary.get(row.key, {})]
  if bags:
    save("bags_auc.png", "Bag AUC by pooling and training-set size, mean ± std over seeds.",
         functools.partial(
             viz.bar_chart, [f"{row.name.split()[0]} n={row.train_examples}" for row in bags],
             [summary[row.key]["test_auc"]["mean"] for row in bags],
             [summary[row.key]["test_auc"]["std"] for row in bags],
             ylabel="test AUC", title="digit_bags/16px: mean ± std over seeds",
             ylim=(0.4, 1.0)))

  seed = min(table.SEEDS)
  for row in table.CLUTTERED_ROWS + table.HEAVY_ROWS + table.LARGE_ROWS:
    example = _examples(out, row)
    has_map = example is not None and "map" in example
    panel = levels = None
    if has_map:
      titles = [f"y={int(label)} pred={int(pred)}"
                for label, pred in zip(example["label"], example["prediction"])]
      panel = functools.partial(viz.attention_grid, example["image"][:4], example["map"][:4],
                                grid=row.grid, boxes=example["box"][:4], titles=titles[:4])
    save(f"attention_{row.key}.png",
         f"{row.name} ({row.family}) on {row.table}: attention overlay, ground-truth box "
         f"(green), most attended region (red); seed {seed}, first test images.", panel)
    if row.family != "multiscale":
      continue
    if has_map and "region_weights" in example:
      grids = {**HEAD_DEFAULTS["multiscale"], **(_model_kwargs(row).get("head_kwargs") or {})
               }["grids"]
      finest = example["region_weights"][0]
      levels = functools.partial(
          viz.multiscale_figure, example["image"][0],
          [viz.coarser_weights(finest, grids[-1], grid) for grid in grids], grids,
          box=example["box"][0])
    save(f"levels_{row.key}.png",
         f"{row.name} on {row.table}: region weights level by level (coarse levels are "
         f"sums of their finer regions' weights).", levels)
  for row in table.BAG_ROWS:
    if (row.train_examples != max(table.BAG_TRAIN_SIZES)
        or _model_kwargs(row).pooling not in ("attention", "gated")):
      continue
    example = _examples(out, row)
    save(f"bag_{row.key}.png",
         f"{row.name}, {row.train_examples} training bags: a positive test bag, each "
         f"instance titled label: weight; target 9s framed green, the most attended red.",
         None if example is None else functools.partial(
             viz.bag_figure, example["bag"], example["weights"], mask=example["mask"],
             instance_labels=example["instance_labels"], target=9))
  return figures


def environment() -> dict[str, Any]:
  return timing.environment({"jax": jax.__version__, "flax": flax.__version__,
                             "optax": optax.__version__, "numpy": np.__version__})


def _environment_text(env: Mapping[str, Any]) -> str:
  return ", ".join([*(f"{k} {v}" for k, v in env["versions"].items()),
                    f"machine {env['cpu']} ({env['cores']} cores)",
                    f"platform {env['platform']}"])


def _read_lines(path: str) -> list[str]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return [line.strip() for line in f if line.strip()]


def build_document(out: str, command: str) -> dict[str, Any] | None:
  """The finished runs of `out` with what the report says about them; None if none.

  Args:
    out: the runs' directory.
    command: the command line to cite when `out` records none that trained.

  Returns:
    `generated` (now, UTC), `environment` (of this machine), `command` (every
    distinct command that trained runs into `out`), `seeds`, `summary` (per row),
    `runs` (every result.json) and `sessions` (each training command's start,
    minutes, runs and workers).
  """
  results = collect_runs(out, table.ROWS + table.REAL_ROWS, table.SEEDS)
  if not results:
    return None
  commands = _read_lines(os.path.join(out, run.COMMANDS_FILE))
  return {"generated": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}",
          "environment": environment(),
          "command": "\n    ".join(dict.fromkeys(commands)) or command,
          "seeds": list(table.SEEDS), "summary": summarize(results, METRICS), "runs": results,
          "sessions": [json.loads(line)
                       for line in _read_lines(os.path.join(out, run.SESSIONS_FILE))]}


def _session_text(sessions: Sequence[Mapping[str, Any]]) -> str:
  """How long the commands that trained the runs took."""
  if not sessions:
    return ""
  return "Wall clock of the training command: " + ", then ".join(
      f"{s['minutes']:.1f} min ({s['runs']} runs, {s['workers']} workers, started "
      f"{s['started']} UTC)" for s in sessions) + ". "


def write_report(document: Mapping[str, Any], *, out: str | None, results_md: str,
                 results_dir: str, data_dir: str) -> None:
  """Writes RESULTS.md and the figures of `document` (`build_document`).

  Args:
    document: the runs and what the report says about them.
    out: the runs' directory, for the attention panels (None: keep those drawn before).
    results_md: the report's path.
    results_dir: the figures' directory; it may hold NOTES.md, a hand-written summary
      put under its own heading.
    data_dir: tfds data directory, for the pointing-game ceilings (left out without
      the data).
  """
  results, summary = document["runs"], document["summary"]
  figures = make_figures(out, summary, results_dir)
  relative = lambda path: os.path.relpath(path, os.path.dirname(os.path.abspath(results_md)))
  steps = {name: "/".join(str(n) for n in sorted({r["steps"] for r in results
                                                   if r["table"] == name})) or "-"
           for name in table.TABLES}
  notes_path = os.path.join(results_dir, "NOTES.md")
  notes = open(notes_path).read() if os.path.exists(notes_path) else ""
  text = [
      "# Results: which attention helps, and does it look at the right place\n",
      f"Generated {document['generated']} UTC by\n",
      f"    {document['command']}\n",
      f"from {len(results)} finished runs (seeds {document['seeds']}; the table and every "
      "setting are in `experiments/configs/ablation.py`). Environment: "
      f"{_environment_text(document['environment'])}.\n",
      "Each run trains with `regionatt_jax.train.loop.train_and_evaluate` (AdamW, warmup "
      "and cosine schedule, gradient clipping; batch 32, bags: batch 16) for "
      f"{steps['cluttered']} steps (each image table) and {steps['bags']} (bags); these "
      "are short runs sized for 2 CPU cores, so the numbers rank "
      "methods early in training rather than at convergence. "
      f"{_session_text(document.get('sessions', []))}"
      "Mean ± sample std over seeds. Pointing game: the centre of the attention map's "
      "maximum lies inside the digit's box (models without a spatial map: -). Train "
      "images/s: steady state after compilation, one XLA thread per run, with another "
      "run in parallel. Wall time: the whole run, including data loading, "
      "compilation and evaluation of 2000 validation and 2000 test images.\n",
  ]
  if notes:
    text += ["## Summary\n", notes.strip() + "\n"]
  bullets = lambda lines: "\n".join(lines) + "\n"
  for name, rows in table.IMAGE_TABLES:
    text += [f"## {table.TABLES[name].title}\n", image_table(summary, rows) + "\n",
             bullets(compare(summary, rows, "test_accuracy", rows[0])
                     + localization_surprises(summary, rows))
             + table_pointing_ceiling(rows, data_dir)]
  text += ["## Does the gap grow with clutter?\n",
           "Mean gain over the plain CNN of the same table; spread = sum of the two rows' "
           "seed standard deviations.\n", clutter_gaps(summary)]
  text += [f"## {table.TABLES['bags'].title}\n", bag_table(summary, table.BAG_ROWS) + "\n"]
  for size in table.BAG_TRAIN_SIZES:
    rows = [row for row in table.BAG_ROWS if row.train_examples == size]
    mean_row = next(row for row in rows if row.name.startswith("mean"))
    text += [f"{size} training bags, test AUC against mean pooling:\n",
             bullets(compare(summary, rows, "test_auc", mean_row, scale=1.0, digits=3,
                             unit=""))]
  for name in table.REAL_DATASETS:
    rows = [row for row in table.REAL_ROWS if row.table == name]
    if any(row.key in summary for row in rows):
      text += [f"## {table.TABLES[name].title}\n", image_table(summary, rows) + "\n",
               bullets(compare(summary, rows, "test_accuracy", rows[0]))]
  text += ["## Figures\n"]
  text += [f"{caption}\n\n![{os.path.basename(path)}]({relative(path)})\n" for caption, path
           in figures]
  with open(results_md, "w") as f:
    f.write("\n".join(text).replace("\n\n\n", "\n\n"))


def save_document(document: Mapping[str, Any], results_dir: str) -> None:
  os.makedirs(results_dir, exist_ok=True)
  with open(os.path.join(results_dir, METRICS_FILE), "w") as f:
    json.dump(document, f, indent=1)


def load_document(results_dir: str) -> dict[str, Any]:
  with open(os.path.join(results_dir, METRICS_FILE)) as f:
    return json.load(f)
