r"""The ablation table: which attention helps, and does it look at the right place.

A `Table` is a config file of `experiments/configs/` with an arg and the training budget
(dotted keys) its rows share; a `Row` is a name and the config arg that makes it, e.g.
`scorer=gated`, so each run is also a plain training job:

    python -m experiments.train --workdir runs/x \
        --config experiments/configs/cluttered.py:canvas=128,scorer=gated \
        --config.train.steps=350 --config.train.global_batch_size=32 ...

Every row runs once per seed in `SEEDS`. Run the whole table (77 minutes on 2 idle CPU
cores; the quick ablation, `--tables cluttered,bags`, about 41) with

    python -m experiments.ablation --out runs/ablation

and one tiny step per row (CI) with `python -m experiments.ablation --smoke`.

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
  cluttered  `cluttered_digits/64`: plain CNN, the seed's AttentionNet, channel
             attention (SE, ECA, coordinate), CBAM, region attention with each scorer,
             multi-scale region attention.
  heavy      `cluttered_digits/64_heavy` (same canvas, 16-24 fragments of 10x10): plain
             CNN, CBAM, region and multi-scale heads, to see the gap grow with clutter.
  large      `cluttered_digits/128` (4x the pixels, the same clutter density, so the
             digit is a 4x smaller share of the image): plain CNN, CBAM, region and
             multi-scale heads on a five-stage backbone.
  bags       `digit_bags/16px` (multiple-instance learning, after Ilse et al., 2018):
             attention / gated attention / mean / max pooling, each at several
             training-set sizes (`BAG_TRAIN_SIZES`).

Every image row shares the README's default backbone (`experiments/configs/default.py`:
a four-stage SmallCNN 16-32-64-64 whose 8x8 output sees a whole digit) and its optimizer;
the rows differ only in the attention they add. The 128x128 canvas gets a fifth stage
(16-16-32-64-64), so its head again sees an 8x8 map.
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

SEEDS = (0, 1, 2)

#: Training-set sizes (bags) of the bag table; Ilse et al. used 50 to 500.
BAG_TRAIN_SIZES = (50, 150, 500)

#: Training steps of the image tables (batch 32) and of the bag table (batch 16).
STEPS = 350
BAG_STEPS = 600

#: Keys every run shares: evaluate and checkpoint once, at the end (`make_config`); no
#: progress bar; the figures come from `experiments.ablation`, not from the training job.
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
  """A results table: the config its rows start from and the budget they share.

  Attributes:
    title: the heading in RESULTS.md.
    config: a config module of `experiments/configs/` (its `get_config(arg)`).
    arg: the config arg every row starts with (e.g. the canvas).
    overrides: dotted config keys -> values: the table's training budget.
    smoke_dataset: the dataset of `--smoke` (None: the table has no smoke run).
  """
  title: str
  config: types.ModuleType
  arg: str = ""
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  smoke_dataset: str | None = None


#: Steps were chosen so that the quick ablation (cluttered + bags) fits in about 40
#: minutes on 2 idle cores and the whole table in under 80 (RESULTS.md gives the
#: measured costs); `default.py`'s 50 warmup steps become 30 of the 350.
_IMAGE_BUDGET = {"train.steps": STEPS, "train.global_batch_size": 32,
                 "optim.warmup_steps": 30}
TABLES: Mapping[str, Table] = {
    "cluttered": Table("cluttered_digits/64", cluttered, "canvas=64", _IMAGE_BUDGET,
                       "cluttered_digits/tiny"),
    "heavy": Table("More clutter, same canvas: cluttered_digits/64_heavy", cluttered,
                   "canvas=64_heavy", _IMAGE_BUDGET, "cluttered_digits/tiny"),
    # Five stages need a canvas of at least 64 for the 4x4 grid (tiny is 32x32).
    "large": Table("Larger canvas, same clutter density: cluttered_digits/128", cluttered,
                   "canvas=128", _IMAGE_BUDGET, "cluttered_digits/64_clean"),
    "bags": Table("digit_bags/16px (multiple-instance learning)", mil_digit_bags, "",
                  {"train.steps": BAG_STEPS, "optim.warmup_steps": 30}, "digit_bags/tiny"),
    # The real-image recipe as it is (about 50-110 epochs).
    "cifar10": Table("cifar10", cifar10),
    "eurosat": Table("eurosat", eurosat),
    "patch_camelyon": Table("patch_camelyon", patch_camelyon),
}


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of a results table.

  Attributes:
    name: the label in tables and figures.
    table: a key of `TABLES`.
    family: the attention family, for the figure panels: `"none"`, `"seed"`,
      `"channel"`, `"spatial"`, `"region"`, `"multiscale"`, `"pooling"`.
    arg: the config arg of the table's config file, after the table's own.
    train_examples: bags table only: training bags (a smaller `digit_bags/16px`).
    grid: the region grid to draw on the attention panels, if the model has one.
  """
  name: str
  table: str
  family: str
  arg: str = ""
  train_examples: int | None = None
  grid: tuple[int, int] | None = None

  @property
  def key(self) -> str:
    """A directory-safe identifier, unique over `ROWS`."""
    size = "" if self.train_examples is None else f"_n{self.train_examples}"
    return f"{self.table}_{self.name}{size}".lower().replace(" ", "_").replace("-", "_")


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
  if smoke:
    if table.smoke_dataset is None:
      raise ValueError(f"table {row.table!r} has no smoke run")
    config.update_from_flattened_dict({**SMOKE, "dataset.name": table.smoke_dataset})
  config.seed = seed
  config.train.eval_every = config.train.steps
  config.train.checkpoint_every = config.train.steps
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

#: Every image row, by name (`table` is filled in by `_image_rows`).
_IMAGE_ROWS = {row.name: row for row in (
    Row("plain CNN", "", "none", "head=none"),
    # Half the published widths (64, 128): at full width one step costs ~9x a SmallCNN
    # step on this CPU, which the hour cannot hold for 3 seeds.
    Row("AttentionNet", "", "seed", "model=attention_net,features=32-64"),
    Row("SE", "", "channel", "attention=se,head=none"),
    Row("ECA", "", "channel", "attention=eca,head=none"),
    Row("CBAM", "", "spatial", "attention=cbam,head=none"),
    Row("coordinate", "", "channel", "attention=coordinate,head=none"),
    *(Row(f"region {label}", "", "region", f"scorer={scorer}", grid=(4, 4))
      for scorer, label in _REGION_SCORERS),
    Row("multi-scale", "", "multiscale", "head=multiscale", grid=(4, 4)),
)}


def _image_rows(table: str, names: Sequence[str]) -> tuple[Row, ...]:
  return tuple(dataclasses.replace(_IMAGE_ROWS[name], table=table) for name in names)


CLUTTERED_ROWS = _image_rows("cluttered", tuple(_IMAGE_ROWS))
HEAVY_ROWS = _image_rows("heavy", ("plain CNN", "CBAM", "region MLP", "multi-scale"))
LARGE_ROWS = _image_rows("large", ("plain CNN", "CBAM", "region MLP", "multi-scale"))

#: The image tables in report order: (table, rows).
IMAGE_TABLES = (("cluttered", CLUTTERED_ROWS), ("heavy", HEAVY_ROWS),
                ("large", LARGE_ROWS))

BAG_POOLINGS = ("attention", "gated", "mean", "max")
BAG_ROWS = tuple(
    Row(f"{pooling} pooling", "bags", "pooling", f"pooling={pooling}", train_examples=size)
    for size in BAG_TRAIN_SIZES for pooling in BAG_POOLINGS)

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
