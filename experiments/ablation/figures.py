"""The ablation's figures: learning curves, accuracy bars and attention panels per table."""

from __future__ import annotations

import functools
import os
from typing import Any, Callable, Mapping

import numpy as np

from experiments.ablation import run
from experiments.configs import ablation as table
from regionatt_jax import viz
from regionatt_jax.nn.models import HEAD_DEFAULTS

CURVES_PREFIX = "curves_"  # the learning-curve figures


def _examples(out: str | None, row: table.Row) -> dict[str, np.ndarray] | None:
  """The figure examples of `row`'s first seed in `out` (None: not there, or no `out`)."""
  path = out and os.path.join(run.run_dir(out, row, min(row.seeds)), run.EXAMPLES_FILE)
  if not path or not os.path.exists(path):
    return None
  with np.load(path) as f:
    return dict(f)


def _drawn_elsewhere(row: table.Row, example: Any, summary: Mapping[str, Any]) -> bool:
  """Whether `row`'s panels are of a run from an earlier document: its first seed is in
  `summary`, but its `example` is not in `out`."""
  return example is None and min(row.seeds) in summary.get(row.key, {}).get("seeds", ())


def _model_kwargs(row: table.Row) -> Mapping[str, Any]:
  return table.make_config(row, 0, data_dir="").model.kwargs


def _curve_label(row: table.Row) -> str:
  return row.label if row.train_examples is None else f"{row.name} n={row.train_examples}"


def make_figures(out: str | None, summary: Mapping[str, Any], results_dir: str
                 ) -> list[tuple[str, str]]:
  """Draws the bar charts and one attention panel per row with a map; `(caption, path)`s.

  Args:
    out: the runs, for the attention panels; None keeps the panels already in
      `results_dir`, as does a row whose first seed is in `summary` but not in `out`
      (its run came from an earlier document, drawn where it trained).
    summary: `summarize`'s per-row summary.
    results_dir: where the PNGs go.
  """
  figures = []

  def save(name: str, caption: str, draw: Callable[[], Any] | None, drawn: bool = False
           ) -> None:
    """Saves the figure `draw()` as `name`; without `draw`, keeps an earlier one where
    there is no `out` or its run was `drawn` elsewhere."""
    path = os.path.join(results_dir, name)
    if draw is not None:
      figures.append((caption, viz.save_figure(draw(), path)))
    elif (out is None or drawn) and os.path.exists(path):
      figures.append((caption, path))

  for name_of_table, rows in (*table.IMAGE_TABLES, ("bags", table.BAG_ROWS)):
    title = table.dataset_of(name_of_table)
    curves = [(_curve_label(row), *(summary[row.key]["curve"][k]
                                     for k in ("step", "mean", "std")))
              for row in rows if "curve" in summary.get(row.key, {})]
    if curves:
      save(f"{CURVES_PREFIX}{name_of_table}.png",
           f"Learning curves on {title}: validation accuracy, mean ± std over seeds.",
           functools.partial(
               viz.learning_curves, [(label, steps, 100 * np.asarray(mean),
                                      100 * np.asarray(std))
                                     for label, steps, mean, std in curves],
               ylabel="validation accuracy (%)", title=f"{title}: mean ± std over seeds"))
  for name_of_table, rows in table.IMAGE_TABLES:
    title = table.dataset_of(name_of_table)
    done = [row for row in rows if "test_accuracy" in summary.get(row.key, {})]
    if done:
      save(f"{name_of_table}_accuracy.png", f"Test accuracy on {title}, mean ± std over seeds.",
           functools.partial(
               viz.bar_chart, [row.label for row in done],
               [100 * summary[row.key]["test_accuracy"]["mean"] for row in done],
               [100 * summary[row.key]["test_accuracy"]["std"] for row in done],
               ylabel="test accuracy (%)", title=f"{title}: mean ± std over seeds"))
  bags = [row for row in table.BAG_ROWS if "test_auc" in summary.get(row.key, {})]
  if bags:
    save("bags_auc.png", "Bag AUC by pooling and training-set size, mean ± std over seeds.",
         functools.partial(
             viz.bar_chart, [_curve_label(row) for row in bags],
             [summary[row.key]["test_auc"]["mean"] for row in bags],
             [summary[row.key]["test_auc"]["std"] for row in bags],
             ylabel="test AUC", title="digit_bags/16px: mean ± std over seeds",
             ylim=(0.4, 1.0)))

  for row in table.CLUTTERED_ROWS + table.HEAVY_ROWS + table.LARGE_ROWS:
    seed = min(row.seeds)
    example = _examples(out, row)
    drawn = _drawn_elsewhere(row, example, summary)
    has_map = example is not None and "map" in example
    panel = levels = None
    if has_map:
      titles = [f"y={int(label)} pred={int(pred)}"
                for label, pred in zip(example["label"], example["prediction"])]
      panel = functools.partial(viz.attention_grid, example["image"][:4], example["map"][:4],
                                grid=row.grid, boxes=example["box"][:4], titles=titles[:4])
    save(f"attention_{row.key}.png",
         f"{row.label} ({row.family}) on {row.table}: attention overlay, ground-truth box "
         f"(green), most attended region (red); seed {seed}, first test images.", panel,
         drawn)
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
         f"{row.label} on {row.table}: region weights level by level (coarse levels are "
         f"sums of their finer regions' weights).", levels, drawn)
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
             instance_labels=example["instance_labels"], target=9),
         _drawn_elsewhere(row, example, summary))
  return figures
