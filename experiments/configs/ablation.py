r"""The ablation table: which attention helps, and does it look at the right place.

A `Table` is a config file of `experiments/configs/` with an arg and the training budget
(dotted keys) its rows share; a `Row` is a name and the config arg that makes it, e.g.
`scorer=gated`, so each run is also a plain training job:

    python -m experiments.train --workdir runs/x \
        --config experiments/configs/cluttered.py:placement=residual,attention=cbam,head=none \
        --config.train.steps=2000 --config.train.global_batch_size=32 ...

Every row runs once per seed of its table (`Table.seeds`: 5 for cluttered_digits/64, 3
for the others), each run evaluating on validation `CURVE_POINTS` times, which gives its
learning curve. Run the whole report (173 runs, about 13 hours on 2 idle CPU cores with
the default 2 workers: cluttered ~9 h, heavy ~1.8, large ~1.4, bags ~0.9, estimated from
the throughput of the 350-step runs and a residual SmallCNN step costing ~2.1x a plain
one; resumable: it skips finished runs, and an unfinished one resumes from its last
checkpoint, so it can be stopped and started again) with

    python -m experiments.ablation --out runs/ablation

and one tiny step per row (CI) with `python -m experiments.ablation --smoke`.

At its end it records every finished run in `results/metrics.json` (stopped early:
`--report_only` with the same `--out` does); commit that file with RESULTS.md and the
figures, and the same command continues on another machine, skipping the runs recorded
there at the current budget.

The real-image tables (`REAL_ROWS`: cifar10, eurosat, patch_camelyon with a ResNet-18,
the recipe of `experiments/configs/cifar10.py`) are not part of the default run; they
need the datasets downloaded once and a GPU or TPU (hours of CPU time each). On such a
machine:

    pip install -e ".[all]"
    tfds build cifar10 eurosat/rgb patch_camelyon --file_format=array_record
    python -m experiments.ablation --tables cifar10,eurosat,patch_camelyon \
        --out runs/real --workers 1 --threads 2 --results_md RESULTS_real.md \
        --results_dir results_real

Tables:
  cluttered  `cluttered_digits/64`, two backbones. The four-stage SmallCNN (the
             README's default): plain CNN, region attention with each scorer,
             multi-scale region attention, and, as labelled extra rows, SE, ECA, CBAM
             and coordinate attention on the network's only signal path (after each
             stage's ReLU). The residual SmallCNN (`placement=residual`: each stage a
             residual block): plain CNN, SE, ECA, CBAM, coordinate attention on the
             residual branch before the add (their published placement), region MLP
             and multi-scale heads. And the seed's AttentionNet.
  heavy      `cluttered_digits/64_heavy` (same canvas, 16-24 fragments of 10x10): plain
             CNN, region and multi-scale heads, residual plain CNN and residual CBAM,
             to see the gap grow with clutter.
  large      `cluttered_digits/128` (4x the pixels, the same clutter density, so the
             digit is a 4x smaller share of the image): plain CNN, region and
             multi-scale heads on a five-stage SmallCNN.
  bags       `digit_bags/16px` (multiple-instance learning, after Ilse et al., 2018):
             attention / gated attention / mean / max pooling of instance embeddings,
             and the instance-level mi-Net with mean / max pooling, each at several
             training-set sizes (`BAG_TRAIN_SIZES`).

Each attention row is compared with the plain CNN of its own backbone (same widths,
same optimizer); the rows of one backbone differ only in the attention they add. The
128x128 canvas gets a fifth stage (16-16-32-64-64), so its head again sees an 8x8 map.
"""

from __future__ import annotations

import dataclasses
import os
import types
from typing import Any, Mapping, Sequence

import ml_collections

from experiments.configs import cifar10
from experiments.configs import cluttered
from experiments.configs import eurosat
from experiments.configs import mil_digit_bags
from experiments.configs import patch_camelyon
from regionatt_jax.train import config as config_lib

#: Seeds of a table (`Table.seeds`); the main table has more (`MAIN_SEEDS`).
SEEDS = (0, 1, 2)
MAIN_SEEDS = (0, 1, 2, 3, 4)

#: Training-set sizes (bags) of the bag table; Ilse et al. used 50 to 500.
BAG_TRAIN_SIZES = (50, 150, 500)

#: Training steps of the image tables (batch 32) and of the bag table (batch 16), chosen
#: from the first report's 350-step runs (0.7 of an epoch, every row still gaining) and
#: `default.py`'s 600 steps of 64 images (94.9 % for the region head), with a margin:
#: 2000 steps of 32 are 4 epochs of the 16,000 training images, and the cosine schedule
#: ends at learning rate 0. A pilot at these settings (seed 0, 2026-12-02) met the
#: convergence rule: plain CNN and region MLP gained +0.15 points of validation accuracy
#: over the last 20 % (98.0 and 97.5 % at the end). Heavy clutter learned slowest (35 %
#: at 350 steps), so it gets 3000; it and the residual rows had no pilot. `report.py`
#: checks every run against the convergence rule (`experiments/ablation/stats.py`) and
#: marks rows that did not converge; those need more steps in the next run.
STEPS = 2000
HEAVY_STEPS = 3000
BAG_STEPS = 1500
#: The seed's AttentionNet has a budget of its own (it is compared with no other row):
#: at 2000 steps (seed 0, 2026-12-02) it gained +3.7 points over the last 20 % and ended
#: at 85.7 % test accuracy, still learning; at 4000 steps (seed 0) 90.2 %, +1.4 points
#: over the last 20 %, flat over its last three evaluations.
ATTENTION_NET_STEPS = 4000

#: Validation evaluations per run: the points of its learning curve.
CURVE_POINTS = 15

#: Keys every run shares: no progress bar; the figures come from `experiments.ablation`,
#: not from the training job (`make_config` sets the evaluation and checkpoint steps).
RUN: Mapping[str, Any] = {
    "train.log_every": 25,
    "train.keep_checkpoints": 1,
    "train.keep_best": 0,
    "train.progress_bar": False,
    "train.num_figures": 0,
}

#: `--smoke`: one step, small batches (and each table's `smoke_dataset`).
SMOKE: Mapping[str, Any] = {
    "train.steps": 1, "train.global_batch_size": 8, "train.eval_batch_size": 64,
    "train.log_every": 1, "optim.warmup_steps": 0,
}


@dataclasses.dataclass(frozen=True)
class Table:
  """A results table: the config its rows start from, the budget and seeds they share.

  Attributes:
    title: the heading in RESULTS.md.
    config: a config module of `experiments/configs/` (its `get_config(arg)`).
    arg: the config arg every row starts with (e.g. the canvas).
    overrides: dotted config keys -> values: the table's training budget.
    smoke_dataset: the dataset of `--smoke` (None: the table has no smoke run).
    seeds: the seeds every row of the table runs with.
  """
  title: str
  config: types.ModuleType
  arg: str = ""
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  smoke_dataset: str | None = None
  seeds: Sequence[int] = SEEDS


def _image_budget(steps: int) -> dict[str, Any]:
  return {"train.steps": steps, "train.global_batch_size": 32, "optim.warmup_steps": 100}


TABLES: Mapping[str, Table] = {
    "cluttered": Table("cluttered_digits/64", cluttered, "canvas=64", _image_budget(STEPS),
                       "cluttered_digits/tiny", MAIN_SEEDS),
    "heavy": Table("More clutter, same canvas: cluttered_digits/64_heavy", cluttered,
                   "canvas=64_heavy", _image_budget(HEAVY_STEPS), "cluttered_digits/tiny"),
    # Five stages need a canvas of at least 64 for the 4x4 grid (tiny is 32x32).
    "large": Table("Larger canvas, same clutter density: cluttered_digits/128", cluttered,
                   "canvas=128", _image_budget(STEPS), "cluttered_digits/64_clean"),
    "bags": Table("digit_bags/16px (multiple-instance learning)", mil_digit_bags, "",
                  {"train.steps": BAG_STEPS, "optim.warmup_steps": 50}, "digit_bags/tiny"),
    # The real-image recipe as it is (about 50-110 epochs).
    "cifar10": Table("cifar10", cifar10),
    "eurosat": Table("eurosat", eurosat),
    "patch_camelyon": Table("patch_camelyon", patch_camelyon),
}


#: The config arg of the residual backbone (`SmallCNN(placement="residual")`).
RESIDUAL = "placement=residual"


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of a results table.

  Attributes:
    name: the method, e.g. "CBAM"; `label` adds its backbone where two rows share it.
    table: a key of `TABLES`.
    family: the attention family, for the figure panels: `"none"`, `"seed"`,
      `"channel"`, `"spatial"`, `"region"`, `"multiscale"`, `"pooling"`.
    arg: the config arg of the table's config file, after the table's own.
    train_examples: bags table only: training bags (a smaller `digit_bags/16px`).
    grid: the region grid to draw on the attention panels, if the model has one.
    steps: training steps where the row's differ from its table's (None: the table's).
  """
  name: str
  table: str
  family: str
  arg: str = ""
  train_examples: int | None = None
  grid: tuple[int, int] | None = None
  steps: int | None = None

  @property
  def residual(self) -> bool:
    """Whether the row's backbone is the residual SmallCNN."""
    return RESIDUAL in self.arg.split(",")

  @property
  def on_path(self) -> bool:
    """Whether channel or spatial attention gates the plain SmallCNN's only path."""
    return (self.family in ("channel", "spatial") and not self.residual
            and TABLES[self.table].config is cluttered)

  @property
  def backbone(self) -> str:
    """The backbone and, for channel/spatial attention, where the module sits."""
    if self.table == "bags" or self.family == "seed":
      return "its own"
    if TABLES[self.table].config is not cluttered:
      backbone = "ResNet-18"
    else:
      backbone = "residual SmallCNN" if self.residual else "SmallCNN"
    if self.family not in ("channel", "spatial"):
      return backbone
    return backbone + (", on the path (extra)" if self.on_path
                       else ", on the branch (published)")

  @property
  def label(self) -> str:
    """The name in tables and figures: the method, and its placement where it varies."""
    return (self.name + (" (residual)" if self.residual else "")
            + (" (on path)" if self.on_path else ""))

  @property
  def key(self) -> str:
    """A directory-safe identifier, unique over `ROWS`."""
    size = "" if self.train_examples is None else f"_n{self.train_examples}"
    backbone = "residual_" if self.residual else ""
    return f"{self.table}_{backbone}{self.name}{size}".lower().replace(" ", "_").replace(
        "-", "_")

  @property
  def seeds(self) -> Sequence[int]:
    return TABLES[self.table].seeds


def bag_data_dir(data_dir: str, train_examples: int) -> str:
  """Where `digit_bags/16px` with only `train_examples` training bags is built."""
  return os.path.join(data_dir, "digit_bags_subsets", f"train_{train_examples}")


def make_config(row: Row, seed: int, *, data_dir: str, smoke: bool = False
                ) -> ml_collections.ConfigDict:
  """The training config of one (row, seed), validated.

  Args:
    row: a row of the table.
    seed: the run's seed (model init, data order).
    data_dir: tfds data directory of the datasets (bags of a smaller training set live
      in a subdirectory, `bag_data_dir`).
    smoke: the table's smoke dataset and one step instead of the real settings.

  Returns:
    The config; `validate_config` has checked keys and values (training checks the
    batch sizes again against its devices).

  Raises:
    ValueError: a bad config arg or override key (the message names it).
  """
  table = TABLES[row.table]
  config = table.config.get_config(",".join(filter(None, (table.arg, row.arg))))
  config.update_from_flattened_dict({**RUN, **table.overrides})
  if row.steps is not None:
    config.train.steps = row.steps
  if smoke:
    if table.smoke_dataset is None:
      raise ValueError(f"table {row.table!r} has no smoke run")
    config.update_from_flattened_dict({**SMOKE, "dataset.name": table.smoke_dataset})
  config.seed = seed
  # Checkpoints at every evaluation: an interrupted run resumes from its last one.
  config.train.eval_every = max(1, config.train.steps // CURVE_POINTS)
  config.train.checkpoint_every = config.train.eval_every
  config.dataset.data_dir = data_dir
  if row.train_examples is not None and not smoke:
    config.dataset.data_dir = bag_data_dir(data_dir, row.train_examples)
  config_lib.validate_config(config, num_devices=1)
  return config


def dataset_of(name: str) -> str:
  """The dataset of table `name` (its config with the table's arg and budget)."""
  config = TABLES[name].config.get_config(TABLES[name].arg)
  config.update_from_flattened_dict(TABLES[name].overrides)
  return config.dataset.name


_REGION_SCORERS = (("conv", "conv"), ("mlp", "MLP"), ("gated", "gated"),
                   ("recurrent", "recurrent"), ("self_attention", "self-attention"))

_CHANNEL_SPATIAL = (("SE", "channel", "se"), ("ECA", "channel", "eca"),
                    ("CBAM", "spatial", "cbam"), ("coordinate", "channel", "coordinate"))

#: Every image row (`table` is filled in by `_image_rows`): the SmallCNN rows, the
#: residual SmallCNN rows, the seed's network.
_IMAGE_ROWS = (
    Row("plain CNN", "", "none", "head=none"),
    *(Row(f"region {label}", "", "region", f"scorer={scorer}", grid=(4, 4))
      for scorer, label in _REGION_SCORERS),
    Row("multi-scale", "", "multiscale", "head=multiscale", grid=(4, 4)),
    # The extra rows: the module gates the network's only signal path.
    *(Row(name, "", family, f"attention={kind},head=none")
      for name, family, kind in _CHANNEL_SPATIAL),
    Row("plain CNN", "", "none", f"{RESIDUAL},head=none"),
    *(Row(name, "", family, f"{RESIDUAL},attention={kind},head=none")
      for name, family, kind in _CHANNEL_SPATIAL),
    Row("region MLP", "", "region", f"{RESIDUAL},scorer=mlp", grid=(4, 4)),
    Row("multi-scale", "", "multiscale", f"{RESIDUAL},head=multiscale", grid=(4, 4)),
    # Half the published widths (64, 128): at full width one step costs ~9x a SmallCNN
    # step on this CPU.
    Row("AttentionNet", "", "seed", "model=attention_net,features=32-64",
        steps=ATTENTION_NET_STEPS),
)


def _image_rows(table: str, labels: Sequence[str] | None = None) -> tuple[Row, ...]:
  """The image rows with these labels (None: all), in `_IMAGE_ROWS` order, of `table`."""
  rows = tuple(dataclasses.replace(row, table=table) for row in _IMAGE_ROWS)
  if labels is None:
    return rows
  unknown = set(labels) - {row.label for row in rows}
  if unknown:
    raise ValueError(f"no image rows labelled {sorted(unknown)}")
  return tuple(row for row in rows if row.label in labels)


CLUTTERED_ROWS = _image_rows("cluttered")
HEAVY_ROWS = _image_rows("heavy", ("plain CNN", "region MLP", "multi-scale",
                                   "plain CNN (residual)", "CBAM (residual)"))
# A 128x128 step costs ~3x a 64x64 one and a residual stage ~2x a plain one: the
# residual rows of this table would add about 4 hours to the report.
LARGE_ROWS = _image_rows("large", ("plain CNN", "region MLP", "multi-scale"))

#: The image tables in report order: (table, rows).
IMAGE_TABLES = (("cluttered", CLUTTERED_ROWS), ("heavy", HEAVY_ROWS),
                ("large", LARGE_ROWS))


def baseline_of(row: Row, rows: Sequence[Row]) -> Row | None:
  """The plain CNN of `row`'s backbone among `rows` (None: the row is one, or has none)."""
  if row.family in ("none", "seed"):
    return None
  return next((other for other in rows if other.family == "none"
               and other.residual == row.residual), None)


BAG_POOLINGS = ("attention", "gated", "mean", "max")
#: Embedding-level pooling (attention MIL and MI-Net), then the instance-level mi-Net
#: baselines of Ilse et al. (2018): each instance classified, its probabilities pooled.
BAG_ROWS = tuple(
    row for size in BAG_TRAIN_SIZES for row in (
        *(Row(f"{pooling} pooling", "bags", "pooling", f"pooling={pooling}",
              train_examples=size) for pooling in BAG_POOLINGS),
        *(Row(f"mi-Net {pooling}", "bags", "pooling", f"pooling={pooling},level=instance",
              train_examples=size) for pooling in ("mean", "max"))))

ROWS = CLUTTERED_ROWS + HEAVY_ROWS + LARGE_ROWS + BAG_ROWS

REAL_DATASETS = ("cifar10", "eurosat", "patch_camelyon")
REAL_ROWS = tuple(
    row for name in REAL_DATASETS for row in (
        Row("ResNet-18", name, "none", "head=none"),
        Row("SE-ResNet-18", name, "channel", "attention=se,head=none"),
        Row("CBAM-ResNet-18", name, "spatial", "attention=cbam,head=none"),
        Row("ResNet-18 + region MLP", name, "region", "scorer=mlp", grid=(4, 4)),
        Row("ResNet-18 + multi-scale", name, "multiscale", "head=multiscale", grid=(4, 4)),
    ))

#: Every row, by key.
ROWS_BY_KEY: Mapping[str, Row] = {row.key: row for row in ROWS + REAL_ROWS}
