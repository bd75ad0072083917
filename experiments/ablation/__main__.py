"""The command line of the ablation (`python -m experiments.ablation --help`).

Trains the selected rows x seeds into `--out` (in `--workers` processes, one XLA thread
each with `--threads 1`), then writes the report: the finished runs of `--out` go into
`<results_dir>/metrics.json`, and RESULTS.md and the figures are rendered from it. A run
already recorded in that metrics.json (at the table's current budget) counts as
finished and stays in it, so the command continues on another machine from the committed
document. With no finished runs in `--out` (e.g. `--report_only`), the report is
re-rendered from the metrics.json already there.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from typing import Sequence

from experiments import ablation
from experiments.ablation import report
from experiments.ablation import run
from experiments.configs import ablation as table
from regionatt_jax import data


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m experiments.ablation",
                                   description=ablation.__doc__.split("\n")[0])
  parser.add_argument("--out", default="runs/ablation", help="directory of the runs")
  parser.add_argument("--data_dir", default="",
                      help="tfds data directory ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)")
  parser.add_argument("--smoke", action="store_true",
                      help="one step per row on the tiny datasets, each row's first seed only")
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
  parser.add_argument("--remeasure", action="store_true",
                      help="measure the finished runs of the selected rows in --out again "
                           "from their checkpoints (after a change to the measurements), "
                           "then write the report; trains nothing")
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
  args.data_dir = data.resolve_data_dir(args.data_dir)
  if args.one:
    result = run.run_one(table.ROWS_BY_KEY[args.one], args.seed, args.out,
                         data_dir=args.data_dir, smoke=args.smoke)
    return run.SKIPPED if result is None else 0
  command = " ".join(["python -m experiments.ablation",
                      *(argv if argv is not None else sys.argv[1:])])
  metrics = os.path.join(args.results_dir, report.METRICS_FILE)
  # --smoke writes a results dir of its own under --out: nothing to continue from.
  previous = (report.load_document(args.results_dir)
              if os.path.exists(metrics) and not args.smoke else None)
  rows = selected_rows(args.tables.split(","), args.smoke, args.rows)
  if args.remeasure:
    found = sum(run.remeasure(row, seed, args.out) for row, seed in run.jobs_of(rows, args.smoke))
    print(f"measured {found} finished runs again", flush=True)
  elif not args.report_only:
    failed = run.train_table(rows, command, args, previous["runs"] if previous else ())
    if failed:
      print(f"failed runs: {failed}", flush=True)
      return 1
  document, out = report.build_document(args.out, command, previous), args.out
  if document is None:
    print(f"no finished runs in {args.out}; re-rendering the report from {metrics}",
          flush=True)
    document, out = report.load_document(args.results_dir), None
  else:
    report.save_document(document, args.results_dir)
  report.write_report(document, out=out, results_md=args.results_md,
                      results_dir=args.results_dir, data_dir=args.data_dir)
  return 0


if __name__ == "__main__":
  sys.exit(main())
