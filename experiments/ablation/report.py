"""The report of the ablation: metrics.json, tables and figures, RESULTS.md.

`build_document` gathers the finished runs of `--out`, and those of the previous
metrics.json still current (`run.is_current`), into one document (environment, commands,
sessions, per-row summary, every run), saved as `<results_dir>/metrics.json`: committed,
it carries the progress of the command to the next machine.
`write_report` renders RESULTS.md (tables with the convergence rule's verdict, paired
95 % intervals against the plain CNN of each backbone) and the figures (learning curves,
accuracy bars, attention panels) from that document, so a report can be re-rendered from
metrics.json alone (the example attention figures then stay as they
were drawn: their inputs live in the runs).
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any, Mapping, Sequence

import flax
import jax
import numpy as np
import optax

from experiments import timing
from experiments.ablation import figures as figures_lib
from experiments.ablation import measure
from experiments.ablation import run
from experiments.ablation import stats
from experiments.configs import ablation as table

METRICS_FILE = "metrics.json"
METRICS = ("test_accuracy", "test_pointing_game", "params", "images_per_sec", "wall_time_s",
           "final_train_loss", "test_auc", "test_bag_accuracy", "instance_localization",
           "chance_localization")


def collect_runs(out: str, rows: Sequence[table.Row]) -> list[dict[str, Any]]:
  """The finished `result.json`s of the rows (each with its table's seeds), in row order."""
  results = []
  for row in rows:
    for seed in row.seeds:
      path = os.path.join(run.run_dir(out, row, seed), run.RESULT_FILE)
      if os.path.exists(path):
        with open(path) as f:
          results.append(json.load(f))
  return results


def _curves(runs: Sequence[Mapping[str, Any]]) -> list[tuple[list[float], list[float]]]:
  return [(r["curve"]["step"], r["curve"]["val_accuracy"]) for r in runs
          if r.get("curve") and r["curve"]["step"]]


def summarize(results: Sequence[Mapping[str, Any]], metrics: Sequence[str] = METRICS
              ) -> dict[str, dict[str, Any]]:
  """Per row key: `n`, mean and sample std (ddof=1; 0 for one seed) of each metric, and
  the learning curve over seeds.

  `curve` is `stats.mean_curve` of the runs' validation curves (`{"step", "mean",
  "std"}`), `val_gain_last_20pct` its `stats.tail_gain`, `converged` whether that gain is
  below the rule's (None: no curve to tell), `converged_runs` how many runs converged.
  """
  by_row: dict[str, list[Mapping[str, Any]]] = {}
  for result in results:
    by_row.setdefault(result["row"], []).append(result)
  summary = {}
  for key, runs in by_row.items():
    entry = {"n": len(runs), "name": runs[0]["name"], "table": runs[0]["table"],
             "family": runs[0]["family"], "train_examples": runs[0]["train_examples"],
             "seeds": sorted(r["seed"] for r in runs), "steps": runs[0].get("steps")}
    for metric in metrics:
      values = np.array([r[metric] for r in runs if r.get(metric) is not None], np.float64)
      if len(values):
        entry[metric] = {"mean": float(values.mean()),
                         "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0,
                         "min": float(values.min()), "max": float(values.max())}
    curve = stats.mean_curve(_curves(runs))
    entry["converged"] = entry["val_gain_last_20pct"] = None
    if curve is not None:
      steps, mean, std = curve
      entry["curve"] = {"step": steps.tolist(), "mean": mean.tolist(), "std": std.tolist()}
      entry["val_gain_last_20pct"] = stats.tail_gain(steps, mean)
      entry["converged"] = stats.converged(steps, mean)
      entry["converged_runs"] = sum(bool(r.get("converged")) for r in runs)
    summary[key] = entry
  return summary


def _pm(entry: Mapping[str, Any], metric: str, scale: float = 1.0, digits: int = 1) -> str:
  if metric not in entry:
    return "-"
  value = entry[metric]
  return f"{scale * value['mean']:.{digits}f} ± {scale * value['std']:.{digits}f}"


def _mean(entry, metric, digits=0, statistic="mean") -> str:
  return f"{entry[metric][statistic]:.{digits}f}" if metric in entry else "-"


def _converged(entry: Mapping[str, Any]) -> str:
  """The table cell of the convergence rule: yes or **no** for the mean curve, with its
  gain and the runs that converged; - without a curve."""
  if entry.get("converged") is None:
    return "-"
  detail = (f"{100 * entry['val_gain_last_20pct']:+.1f}; "
            f"{entry['converged_runs']}/{entry['n']} runs")
  return f"yes ({detail})" if entry["converged"] else f"**no** ({detail})"


def _table(summary: Mapping[str, Any], rows: Sequence[table.Row], header: Sequence[str],
           label, cells) -> str:
  """A markdown table: per row its `label(row)` cells, then `cells(entry)` of its
  summary, the convergence cell and the number of seeds (or "not run")."""
  header = [*header, "converged (val gain, last 20 %)", "seeds"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for row in rows:
    entry = summary.get(row.key)
    if entry is None:
      values = ["not run"] + [""] * (len(header) - len(label(row)) - 2) + ["0"]
    else:
      values = [*cells(entry), _converged(entry), str(entry["n"])]
    lines.append("| " + " | ".join([*label(row), *values]) + " |")
  return "\n".join(lines)


def image_table(summary: Mapping[str, Any], rows: Sequence[table.Row]) -> str:
  return _table(
      summary, rows,
      ["method", "backbone, attention placement", "family", "test accuracy (%)",
       "pointing game (%)", "params", "train images/s (best seed)",
       "wall time / run (s, fastest seed)"],
      lambda row: [row.label, row.backbone, row.family],
      lambda entry: [_pm(entry, "test_accuracy", 100), _pm(entry, "test_pointing_game", 100),
                     _mean(entry, "params"), _mean(entry, "images_per_sec", statistic="max"),
                     _mean(entry, "wall_time_s", statistic="min")])


def bag_table(summary: Mapping[str, Any], rows: Sequence[table.Row]) -> str:
  return _table(
      summary, rows,
      ["pooling", "training bags", "test AUC", "bag accuracy (%)",
       "instance localization (%)", "chance (%)", "params",
       "wall time / run (s, fastest seed)"],
      lambda row: [row.name, str(row.train_examples)],
      lambda entry: [_pm(entry, "test_auc", 1, 3), _pm(entry, "test_bag_accuracy", 100),
                     _pm(entry, "instance_localization", 100),
                     _pm(entry, "chance_localization", 100), _mean(entry, "params"),
                     _mean(entry, "wall_time_s", statistic="min")])


def paired(results: Sequence[Mapping[str, Any]], row: table.Row, baseline: table.Row,
           metric: str) -> dict[str, float] | None:
  """`stats.paired_difference` of `row` minus `baseline` over the seeds both ran (None:
  no common seed)."""
  values = {(r["row"], r["seed"]): r.get(metric) for r in results}
  seeds = sorted(seed for seed in set(row.seeds) & set(baseline.seeds)
                 if values.get((row.key, seed)) is not None
                 and values.get((baseline.key, seed)) is not None)
  if not seeds:
    return None
  return stats.paired_difference([values[(row.key, s)] for s in seeds],
                                 [values[(baseline.key, s)] for s in seeds])


def _paired_text(found: Mapping[str, float], scale: float, digits: int) -> str:
  """`+d [low, high]` in the metric's units."""
  if found["n"] < 2:
    return f"{scale * found['mean']:+.{digits}f} (one seed)"
  return (f"{scale * found['mean']:+.{digits}f} [{scale * found['low']:+.{digits}f}, "
          f"{scale * found['high']:+.{digits}f}]")


def _verdict(found: Mapping[str, float]) -> str:
  if found["n"] < 2:
    return "one seed so far, no interval"
  if found["low"] > 0:
    return "a gain: the interval excludes 0"
  if found["high"] < 0:
    return "a loss: the interval excludes 0"
  return "no difference shown: the interval holds 0"


def compare(summary: Mapping[str, Any], results: Sequence[Mapping[str, Any]],
            pairs: Sequence[tuple[table.Row, table.Row]], metric: str,
            scale: float = 100.0, digits: int = 1, unit: str = " points") -> list[str]:
  """Plain sentences: the best row, and each `(row, baseline)` pair's paired difference.

  The difference is the mean over seeds of `row - baseline` on the same seed (same
  initialization seed and data order), with its 95 % t interval (`stats.paired_difference`).
  """
  rows = list(dict.fromkeys(row for pair in pairs for row in pair))
  done = [(row, summary[row.key]) for row in rows
          if row.key in summary and metric in summary[row.key]]
  if not done:
    return []
  best_row, best = max(done, key=lambda item: item[1][metric]["mean"])
  label = {"test_auc": "test AUC"}.get(metric, metric.replace("_", " "))
  lines = [f"- Best {label}: **{best_row.label}**, "
           f"{scale * best[metric]['mean']:.{digits}f} ± "
           f"{scale * best[metric]['std']:.{digits}f}."]
  for row, baseline in pairs:
    found = paired(results, row, baseline, metric)
    if found is None:
      continue
    lines.append(f"- {row.label} vs {baseline.label}: {_paired_text(found, scale, digits)}"
                 f"{unit} over {found['n']} paired seeds; {_verdict(found)}.")
  return lines


def baseline_pairs(rows: Sequence[table.Row]) -> list[tuple[table.Row, table.Row]]:
  """Each row with the plain CNN of its own backbone (`ablation.baseline_of`)."""
  return [(row, base) for row in rows
          if (base := table.baseline_of(row, rows)) is not None]


def region_vs_published(rows: Sequence[table.Row]) -> list[tuple[table.Row, table.Row]]:
  """Each residual-backbone region head against each module in its published placement."""
  heads = [row for row in rows if row.residual and row.family in ("region", "multiscale")]
  modules = [row for row in rows if row.residual and row.family in ("channel", "spatial")]
  return [(head, module) for head in heads for module in modules]


def clutter_gaps(results: Sequence[Mapping[str, Any]]) -> str:
  """A table of each attention row's paired gain over the plain CNN of its backbone, per
  dataset, with its 95 % interval."""
  labels = list(dict.fromkeys(row.label for _, rows in table.IMAGE_TABLES[1:]
                              for row, _ in baseline_pairs(rows)))
  lines = ["| gain over the plain CNN of the same backbone (points, 95 % CI) | "
           + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
  for name_of_table, rows in table.IMAGE_TABLES:
    found = {row.label: paired(results, row, base, "test_accuracy")
             for row, base in baseline_pairs(rows)}
    cells = ["-" if found.get(label) is None else _paired_text(found[label], 100, 1)
             for label in labels]
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
        lines.append(f"- {row.label} classifies {100 * accuracy:.1f} % correctly, but its "
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


def build_document(out: str, command: str, previous: Mapping[str, Any] | None = None
                   ) -> dict[str, Any] | None:
  """The finished runs of `out` and of `previous` with what the report says about them;
  None if `out` has none (`previous` then stands as it is).

  Args:
    out: the runs' directory.
    command: the command line to cite when neither `out` nor `previous` records one.
    previous: an earlier document (the committed metrics.json, perhaps written on
      another machine): its runs that `run.is_current` join those of `out` (a run of
      `out` wins over the same (row, seed) there), its commands and sessions come first.
      The others are left out, with a printed line; with none current, its commands and
      sessions too.

  Returns:
    `generated` (now, UTC), `environment` (of this machine), `command` (every
    distinct command that trained the runs), `seeds` (per table), `summary` (per row,
    `summarize`), `runs` (every result.json, in row and seed order) and `sessions` (each
    training command's start, minutes, runs and workers).
  """
  rows = table.ROWS + table.REAL_ROWS
  fresh = collect_runs(out, rows)
  if not fresh:
    return None
  earlier_runs = previous["runs"] if previous else []
  recorded = [r for r in earlier_runs if run.is_current(r)]
  found = {(r["row"], r["seed"]): r for r in [*recorded, *fresh]}
  if len(recorded) < len(earlier_runs):
    print(f"left out {len(earlier_runs) - len(recorded)} of the {len(earlier_runs)} runs of "
          "the earlier document: not what the table trains now (row, seed, steps, batch "
          f"or dataset){'' if recorded else '; its commands and sessions too'}", flush=True)
  earlier = previous if recorded else {"command": "", "sessions": []}
  results = [found[(row.key, seed)] for row in rows for seed in row.seeds
             if (row.key, seed) in found]
  commands = [*filter(None, (line.strip() for line in earlier["command"].splitlines())),
              *_read_lines(os.path.join(out, run.COMMANDS_FILE))]
  sessions = [*earlier.get("sessions", []),
              *run.read_sessions(out)]
  return {"generated": f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M}",
          "environment": environment(),
          "command": "\n    ".join(dict.fromkeys(commands)) or command,
          "seeds": {name: list(t.seeds) for name, t in table.TABLES.items()},
          "summary": summarize(results), "runs": results,
          # A session is its command and start: rebuilding from the same `out` adds none.
          "sessions": list({(s["started"], s["command"]): s for s in sessions}.values())}


def unfinished(results: Sequence[Mapping[str, Any]]) -> str:
  """A paragraph: per table of the report that lacks runs, its finished of its planned
  runs (its rows x its seeds); "" when none lacks any. A real-image table counts once it
  has a run (it is not part of the default command)."""
  finished = {(r["row"], r["seed"]) for r in results}
  lines = []
  for name, spec in table.TABLES.items():
    rows = [row for row in table.ROWS + table.REAL_ROWS if row.table == name]
    done = sum((row.key, seed) in finished for row in rows for seed in spec.seeds)
    planned = len(rows) * len(spec.seeds)
    if done < planned and (done or name not in table.REAL_DATASETS):
      lines.append(f"- {name} ({table.dataset_of(name)}): {done} of {planned} runs "
                   f"({len(rows)} rows x {len(spec.seeds)} seeds)")
  if not lines:
    return ""
  return ("Not complete yet; runs finished of planned (the table's rows x its seeds):\n\n"
          + "\n".join(lines) + "\n")


def _session_text(sessions: Sequence[Mapping[str, Any]]) -> str:
  """How long the commands that trained the runs took."""
  if not sessions:
    return ""
  return "Wall clock of the training command: " + ", then ".join(
      f"{s['minutes']:.1f} min ({_trained(s)} runs, {s['workers']} workers"
      f"{', ' + s['cpu'] if 'cpu' in s else ''}, started {s['started']} UTC)"
      for s in sessions) + ". "


def _trained(session: Mapping[str, Any]) -> str:
  """How many runs a session trained: "n of planned" (older records: the planned)."""
  if "trained" not in session:
    return str(session["runs"])
  return f"{session['trained']} of {session['runs']} planned"


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
  results = document["runs"]
  summary = summarize(results)  # from the runs, so that old documents render alike
  figures = figures_lib.make_figures(out, summary, results_dir)
  relative = lambda path: os.path.relpath(path, os.path.dirname(os.path.abspath(results_md)))
  notes_path = os.path.join(results_dir, "NOTES.md")
  notes = open(notes_path).read() if os.path.exists(notes_path) else ""
  text = [
      "# Results: which attention helps, and does it look at the right place\n",
      f"Generated {document['generated']} UTC by\n",
      f"    {document['command']}\n",
      f"from {len(results)} finished runs (the tables and every setting are in "
      "`experiments/configs/ablation.py`). Environment: "
      f"{_environment_text(document['environment'])}. "
      f"{_session_text(document.get('sessions', []))}\n",
      unfinished(results),
      "Each run trains with `regionatt_jax.train.loop.train_and_evaluate` (AdamW, warmup "
      "and cosine schedule, gradient clipping; batch 32, bags: batch 16) and evaluates "
      "on the validation split along the way, which gives its learning curve:\n",
      budget_table(results, summary),
      f"**Convergence rule.** A run has converged when its validation accuracy gains less "
      f"than {100 * stats.CONVERGED_GAIN:.1f} points over the last "
      f"{100 * stats.CONVERGED_TAIL:.0f} % of its steps (`experiments/ablation/stats.py`); "
      "a row, when the mean of its seeds' curves has. The tables give that gain and mark "
      "rows that did not converge **no**; their numbers rank methods before the end of "
      "learning.\n",
      "**Backbones.** SmallCNN: four stages of conv-BN-ReLU (16-32-64-64; five on the 128 "
      "canvas), the README's default. Channel and spatial attention on it sit after each "
      "stage's ReLU, on the network's only signal path: an extra row, not a published "
      "placement. Residual SmallCNN (`placement=residual`): each stage a residual block "
      "(conv-BN-ReLU-conv-BN, identity or 1x1 shortcut), the attention on the branch "
      "before the add, as in SE-ResNet, the CBAM paper and coordinate attention's "
      "networks; the branch's last BatchNorm starts at scale 1 (with no stem conv, "
      "branches started at 0 leave a network of 1x1 convolutions at initialization: "
      "`docs/modules.md`). Every attention row is compared with the plain CNN of its own backbone. "
      "AttentionNet is the seed network with BatchNorm on its pooled features "
      "(`docs/attention_net.md` says why).\n",
      "**Comparisons.** Mean ± sample std over seeds. A gain is paired: per seed, the row "
      "minus the plain CNN of the same backbone on the same seed (same initialization "
      "seed, same data order), averaged, with its 95 % t interval over the seeds; it is "
      "a gain or a loss only where the interval excludes 0. Pointing game: the centre of "
      "the attention map's maximum lies inside the digit's box (models without a spatial "
      "map: -). Train images/s: steady state after compilation, one XLA thread per run, "
      "with another run in parallel. Wall time: the whole run, including data loading, "
      "compilation and the validation and test evaluations.\n",
  ]
  if notes:
    text += ["## Summary\n", notes.strip() + "\n"]
  bullets = lambda lines: "\n".join(lines) + "\n"
  for name, rows in table.IMAGE_TABLES:
    text += [f"## {table.TABLES[name].title}\n", image_table(summary, rows) + "\n",
             bullets(compare(summary, results, baseline_pairs(rows), "test_accuracy")
                     + localization_surprises(summary, rows))
             + table_pointing_ceiling(rows, data_dir)]
    against_published = compare(summary, results, region_vs_published(rows),
                                "test_accuracy")[1:]
    if against_published:
      text += ["Region heads against the channel and spatial modules in their published "
               "placement (both on the residual SmallCNN), paired over seeds:\n",
               bullets(against_published)]
  text += ["## Does the gap grow with clutter?\n",
           "Paired gain over the plain CNN of the same backbone and table, with its 95 % "
           "interval over seeds.\n", clutter_gaps(results)]
  text += [f"## {table.TABLES['bags'].title}\n", bag_table(summary, table.BAG_ROWS) + "\n"]
  for size in table.BAG_TRAIN_SIZES:
    rows = [row for row in table.BAG_ROWS if row.train_examples == size]
    mean_row = next(row for row in rows if row.name.startswith("mean"))
    text += [f"{size} training bags, test AUC against mean pooling:\n",
             bullets(compare(summary, results, [(row, mean_row) for row in rows
                                                if row is not mean_row],
                             "test_auc", scale=1.0, digits=3, unit=""))]
  for name in table.REAL_DATASETS:
    rows = [row for row in table.REAL_ROWS if row.table == name]
    if any(row.key in summary for row in rows):
      text += [f"## {table.TABLES[name].title}\n", image_table(summary, rows) + "\n",
               bullets(compare(summary, results, baseline_pairs(rows), "test_accuracy"))]
  curves = [(c, p) for c, p in figures if os.path.basename(p).startswith(figures_lib.CURVES_PREFIX)]
  for heading, chosen in (("## Learning curves\n", curves),
                          ("## Figures\n", [f for f in figures if f not in curves])):
    text += [heading] + [f"{caption}\n\n![{os.path.basename(path)}]({relative(path)})\n"
                         for caption, path in chosen]
  with open(results_md, "w") as f:
    f.write("\n".join(text).replace("\n\n\n", "\n\n"))


def budget_table(results: Sequence[Mapping[str, Any]], summary: Mapping[str, Any]) -> str:
  """Per table with runs: dataset, steps, seeds, runs, and rows converged of rows with
  a curve."""
  lines = ["| table | dataset | steps | batch | seeds | runs | rows converged |",
           "|---|---|---|---|---|---|---|"]
  for name in table.TABLES:
    runs = [r for r in results if r["table"] == name]
    if not runs:
      continue
    told = [e["converged"] for e in summary.values()
            if e["table"] == name and e.get("converged") is not None]
    converged = f"{sum(told)} of {len(told)}" if told else "- (no curves)"
    steps = "/".join(str(n) for n in sorted({r["steps"] for r in runs}))
    batch = "/".join(str(n) for n in sorted({r["batch_size"] for r in runs if "batch_size" in r}))
    seeds = ", ".join(str(n) for n in sorted({r["seed"] for r in runs}))
    lines.append(f"| {name} | {table.dataset_of(name)} | {steps} | {batch} | {seeds} | "
                 f"{len(runs)} | {converged} |")
  return "\n".join(lines) + "\n"


def save_document(document: Mapping[str, Any], results_dir: str) -> None:
  os.makedirs(results_dir, exist_ok=True)
  with open(os.path.join(results_dir, METRICS_FILE), "w") as f:
    json.dump(document, f, indent=1)


def load_document(results_dir: str) -> dict[str, Any]:
  with open(os.path.join(results_dir, METRICS_FILE)) as f:
    return json.load(f)
