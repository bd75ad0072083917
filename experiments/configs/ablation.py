r"""The ablation table: which attention helps, and does it look at the right place.

Each `Row` is a name, the table it belongs to, and the config keys it changes from
`regionatt_jax.train.config.base_config()` (dotted, as on the command line). Every row
runs once per seed in `SEEDS`. Run the whole table (77 minutes on 2 idle CPU cores;
the quick ablation, `--tables cluttered,bags`, about 41) with

    python -m experiments.ablation --out runs/ablation

and one tiny step per row (CI) with `python -m experiments.ablation --smoke`.

The real-image tables (`REAL_ROWS`: cifar10, eurosat, patch_camelyon with a ResNet-18)
are not part of the default run; they need the datasets downloaded once and a GPU or
TPU (hours of CPU time each). On such a machine:

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
from typing import Any, Mapping, Sequence

SEEDS = (0, 1, 2)

#: Training-set sizes (bags) of the bag table; Ilse et al. used 50 to 500.
BAG_TRAIN_SIZES = (50, 150, 500)

#: Training steps of the image tables (batch 32) and of the bag table (batch 16).
STEPS = 350
BAG_STEPS = 600

#: Keys every run shares (the optimizer of `experiments/configs/default.py`): evaluate
#: and checkpoint once, at the end; no progress bar; the figures come from
#: `experiments.ablation`, not from the training job.
COMMON: Mapping[str, Any] = {
    "train.global_batch_size": 32,
    "train.eval_batch_size": 250,
    "train.log_every": 25,
    "train.keep_checkpoints": 1,
    "train.keep_best": 0,
    "train.progress_bar": False,
    "train.num_figures": 0,
    "optim.learning_rate": 3e-3,
    "optim.warmup_steps": 30,
    "optim.weight_decay": 1e-4,
    "optim.clip_norm": 1.0,
}

#: Per table: dataset and length of training. Steps were chosen so that the quick
#: ablation (cluttered + bags) fits in about 40 minutes on 2 idle cores and the whole
#: table in under 80 (RESULTS.md gives the measured costs).
TABLES: Mapping[str, Mapping[str, Any]] = {
    "cluttered": {"dataset.name": "cluttered_digits/64", "train.steps": STEPS},
    "heavy": {"dataset.name": "cluttered_digits/64_heavy", "train.steps": STEPS},
    "large": {"dataset.name": "cluttered_digits/128", "train.steps": STEPS},
    "bags": {"dataset.name": "digit_bags/16px", "train.steps": BAG_STEPS,
             "train.global_batch_size": 16, "optim.learning_rate": 1e-3,
             "model.name": "MILClassifier"},
}

#: `--smoke`: the tiny configs, one step, small batches.
SMOKE: Mapping[str, Mapping[str, Any]] = {
    "cluttered": {"dataset.name": "cluttered_digits/tiny"},
    "heavy": {"dataset.name": "cluttered_digits/tiny"},
    # Five stages need a canvas of at least 64 for the 4x4 grid (tiny is 32x32).
    "large": {"dataset.name": "cluttered_digits/64_clean"},
    "bags": {"dataset.name": "digit_bags/tiny"},
}
SMOKE_COMMON: Mapping[str, Any] = {
    "train.steps": 1, "train.global_batch_size": 8, "train.eval_batch_size": 64,
    "train.log_every": 1, "optim.warmup_steps": 0,
}


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of a results table.

  Attributes:
    name: the label in tables and figures.
    table: `"cluttered"`, `"large"` or `"bags"` (a key of `TABLES`).
    family: the attention family, for the figure panels: `"none"`, `"seed"`,
      `"channel"`, `"spatial"`, `"region"`, `"multiscale"`, `"pooling"`.
    overrides: dotted config keys -> values, applied after `COMMON` and `TABLES`.
    train_examples: bags table only: training bags (a smaller `digit_bags/16px`).
    grid: the region grid to draw on the attention panels, if the model has one.
  """
  name: str
  table: str
  family: str
  overrides: Mapping[str, Any]
  train_examples: int | None = None
  grid: tuple[int, int] | None = None

  @property
  def key(self) -> str:
    """A directory-safe identifier, unique over `ROWS`."""
    size = "" if self.train_examples is None else f"_n{self.train_examples}"
    return f"{self.table}_{self.name}{size}".lower().replace(" ", "_").replace("-", "_")


def _classifier(**kwargs) -> dict[str, Any]:
  return {"model.name": "RegionAttentionClassifier", "model.kwargs": kwargs}


def _region_head(scorer: str, **kwargs) -> dict[str, Any]:
  """A 4x4 region-attention head (softmax over 16 regions, weighted sum) with `scorer`."""
  return _classifier(head="region", head_kwargs={"grid": (4, 4), "scorer": scorer},
                     **kwargs)


def _multiscale(**kwargs) -> dict[str, Any]:
  return _classifier(head="multiscale", head_kwargs={
      "grids": ((1, 1), (2, 2), (4, 4)), "mode": "coarse_to_fine"}, **kwargs)


#: The default backbone (64x64 canvas) and its five-stage form for the 128x128 canvas.
_FOUR_STAGES = {"backbone_kwargs": {"features": (16, 32, 64, 64)}}
_FIVE_STAGES = {"backbone_kwargs": {"features": (16, 16, 32, 64, 64)}}


def _image_rows(table: str, stages: Mapping[str, Any], names: Sequence[str]) -> tuple[Row, ...]:
  """The rows called `names` of one image table, on the backbone `stages`."""
  rows = (
      Row("plain CNN", table, "none", _classifier(head=None, **stages)),
      # Half the published widths (64, 128): at full width one step costs ~9x a SmallCNN
      # step on this CPU, which the hour cannot hold for 3 seeds.
      Row("AttentionNet", table, "seed",
          {"model.name": "AttentionNet", "model.kwargs": {"features": (32, 64)}}),
      Row("SE", table, "channel", _classifier(head=None, attention="se", **stages)),
      Row("ECA", table, "channel", _classifier(head=None, attention="eca", **stages)),
      Row("CBAM", table, "spatial", _classifier(head=None, attention="cbam", **stages)),
      Row("coordinate", table, "channel",
          _classifier(head=None, attention="coordinate", **stages)),
      *(Row(f"region {label}", table, "region", _region_head(scorer, **stages), grid=(4, 4))
        for scorer, label in (("conv", "conv"), ("mlp", "MLP"), ("gated", "gated"),
                              ("recurrent", "recurrent"),
                              ("self_attention", "self-attention"))),
      Row("multi-scale", table, "multiscale", _multiscale(**stages), grid=(4, 4)),
  )
  by_name = {row.name: row for row in rows}
  return tuple(by_name[name] for name in names)


CLUTTERED_ROWS = _image_rows("cluttered", _FOUR_STAGES, (
    "plain CNN", "AttentionNet", "SE", "ECA", "CBAM", "coordinate", "region conv",
    "region MLP", "region gated", "region recurrent", "region self-attention",
    "multi-scale"))
HEAVY_ROWS = _image_rows("heavy", _FOUR_STAGES,
                         ("plain CNN", "CBAM", "region MLP", "multi-scale"))
LARGE_ROWS = _image_rows("large", _FIVE_STAGES,
                         ("plain CNN", "CBAM", "region MLP", "multi-scale"))

#: The image tables in report order: (table, title, rows).
IMAGE_TABLES = (
    ("cluttered", "cluttered_digits/64", CLUTTERED_ROWS),
    ("heavy", "More clutter, same canvas: cluttered_digits/64_heavy", HEAVY_ROWS),
    ("large", "Larger canvas, same clutter density: cluttered_digits/128", LARGE_ROWS),
)

BAG_ROWS = tuple(
    Row(f"{pooling} pooling", "bags", "pooling", {"model.kwargs": {"pooling": pooling}},
        train_examples=size)
    for size in BAG_TRAIN_SIZES for pooling in ("attention", "gated", "mean", "max"))

ROWS = CLUTTERED_ROWS + HEAVY_ROWS + LARGE_ROWS + BAG_ROWS

#: Real images: name -> steps (about 50 epochs at batch 128).
REAL_DATASETS: Mapping[str, Mapping[str, Any]] = {
    "cifar10": {"dataset.name": "cifar10", "train.steps": 18000},
    "eurosat": {"dataset.name": "eurosat/rgb", "train.steps": 8500},
    "patch_camelyon": {"dataset.name": "patch_camelyon", "train.steps": 100000},
}
TABLES = {**TABLES, **{
    name: {**settings, "train.global_batch_size": 128, "train.eval_batch_size": 500,
           "train.log_every": 100, "dataset.augment": True, "optim.warmup_steps": 500,
           "optim.weight_decay": 5e-2}
    for name, settings in REAL_DATASETS.items()}}


def _resnet(**kwargs) -> dict[str, Any]:
  return _classifier(backbone="resnet18", **kwargs)


REAL_ROWS = tuple(
    row for name in REAL_DATASETS for row in (
        Row("ResNet-18", name, "none", _resnet(head=None)),
        Row("SE-ResNet-18", name, "channel", _resnet(head=None, attention="se")),
        Row("CBAM-ResNet-18", name, "spatial", _resnet(head=None, attention="cbam")),
        Row("ResNet-18 + region MLP", name, "region",
            _region_head("mlp", backbone="resnet18"), grid=(4, 4)),
        Row("ResNet-18 + multi-scale", name, "multiscale", _multiscale(backbone="resnet18"),
            grid=(4, 4)),
    ))
