r"""The ablation: trains the table of `experiments/configs/ablation.py` x seeds, measures
each run and writes RESULTS.md.

    python -m experiments.ablation --out runs/ablation            # the real run
    python -m experiments.ablation --smoke --out /tmp/smoke       # one tiny step per row
    python -m experiments.ablation --out runs/ablation --report_only
    python -m experiments.ablation --out runs/ablation --tables bags --remeasure  # measure again

Modules: `run` (datasets, one run per (row, seed) in worker processes, per-run locks),
`measure` (what the training job does not measure, from a run's checkpoint), `stats`
(the convergence rule, paired intervals over seeds), `report` (metrics.json, tables,
RESULTS.md), `figures` (learning curves, accuracy bars, attention panels); the command
line is `__main__`.
"""
