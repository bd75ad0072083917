r"""The ablation table: which attention helps, and does it look at the right place.

Each `Row` is a name, the table it belongs to, and the config keys it changes from
`regionatt_jax.train.config.base_config()` (dotted, as on the command line). Every row
runs once per seed in `SEEDS`. Run the whole table (about an hour on 2 CPU cores) with

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
  large      `cluttered_digits/128_heavy` (4x the pixels, 40-56 fragments): a
             half-width backbone without attention, with CBAM, region and multi-scale
             heads.
  bags       `digit_bags/16px` (multiple-instance learning, after Ilse et al., 2018):
             attention / gated attention / mean / max pooling, each at several
             training-set sizes (`BAG_TRAIN_SIZES`).

Region rows use a `MultiScaleRegionAttention` head with the single grid 4x4 in
"coarse_to_fine" mode: that is exactly `RegionAttention(grid=(4, 4))` (softmax over the
16 regions, weighted sum), but it takes the scorer as a class, which a JSON-able config
can carry; `RegionAttention` takes a scorer instance, which a config cannot.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from regionatt_jax import nn as ra_nn

SEEDS = (0, 1, 2)

#: Training-set sizes (bags) of the bag table; Ilse et al. used 50 to 500.
BAG_TRAIN_SIZES = (50, 150, 500)

#: Keys every run shares: evaluate and checkpoint once, at the end; no progress bar;
#: the figures come from `experiments.ablation`, not from the training job.
COMMON: Mapping[str, Any] = {
    "train.global_batch_size": 32,
    "train.eval_batch_size": 250,
    "train.log_every": 10,
    "train.keep_checkpoints": 1,
    "train.keep_best": 0,
    "train.progress_bar": False,
    "train.num_figures": 0,
    "optim.learning_rate": 1e-3,
    "optim.warmup_steps": 20,
}

#: Per table: dataset and length of training. Steps were chosen so that the whole
#: table fits in about an hour on 2 cores (see RESULTS.md for the measured costs).
TABLES: Mapping[str, Mapping[str, Any]] = {
    "cluttered": {"dataset.name": "cluttered_digits/64", "train.steps": 150},
    "heavy": {"dataset.name": "cluttered_digits/64_heavy", "train.steps": 150},
    "large": {"dataset.name": "cluttered_digits/128_heavy", "train.steps": 150},
    "bags": {"dataset.name": "digit_bags/16px", "train.steps": 250,
             "train.global_batch_size": 16, "optim.learning_rate": 5e-4,
             "model.name": "MILClassifier"},
}

#: `--smoke`: the tiny configs, one step, small batches.
SMOKE: Mapping[str, Mapping[str, Any]] = {
    "cluttered": {"dataset.name": "cluttered_digits/tiny"},
    "heavy": {"dataset.name": "cluttered_digits/tiny"},
    "large": {"dataset.name": "cluttered_digits/tiny"},
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


def _region_head(scorer: type, **kwargs) -> dict[str, Any]:
  """A 4x4 region-attention head with `scorer` (see the module docstring)."""
  return _classifier(head="multiscale", head_kwargs={
      "grids": ((4, 4),), "mode": "coarse_to_fine", "scorer": scorer}, **kwargs)


def _multiscale(**kwargs) -> dict[str, Any]:
  return _classifier(head="multiscale", head_kwargs={
      "grids": ((1, 1), (2, 2), (4, 4)), "mode": "coarse_to_fine"}, **kwargs)


#: The large canvas has 4x the pixels: half-width stages keep a step's cost near a
#: 64x64 step of the full-width backbone (1.4 s at full width here, too slow for the hour).
_NARROW = {"backbone_kwargs": {"features": (16, 32, 64)}}

CLUTTERED_ROWS = (
    Row("plain CNN", "cluttered", "none", _classifier(head=None)),
    # Half the published widths (64, 128): at full width one step costs 9x a SmallCNN
    # step on this CPU (2.7 s at batch 32), which the hour cannot hold for 3 seeds.
    Row("AttentionNet", "cluttered", "seed",
        {"model.name": "AttentionNet", "model.kwargs": {"features": (32, 64)}}),
    Row("SE", "cluttered", "channel", _classifier(head=None, attention="se")),
    Row("ECA", "cluttered", "channel", _classifier(head=None, attention="eca")),
    Row("CBAM", "cluttered", "spatial", _classifier(head=None, attention="cbam")),
    Row("coordinate", "cluttered", "channel", _classifier(head=None, attention="coordinate")),
    Row("region conv", "cluttered", "region", _region_head(ra_nn.ConvScorer), grid=(4, 4)),
    Row("region MLP", "cluttered", "region", _region_head(ra_nn.MLPScorer), grid=(4, 4)),
    Row("region gated", "cluttered", "region", _region_head(ra_nn.GatedScorer), grid=(4, 4)),
    Row("region recurrent", "cluttered", "region", _region_head(ra_nn.RecurrentScorer),
        grid=(4, 4)),
    Row("region self-attention", "cluttered", "region",
        _region_head(ra_nn.SelfAttentionScorer), grid=(4, 4)),
    Row("multi-scale", "cluttered", "multiscale", _multiscale(), grid=(4, 4)),
)

HEAVY_ROWS = (
    Row("plain CNN", "heavy", "none", _classifier(head=None)),
    Row("CBAM", "heavy", "spatial", _classifier(head=None, attention="cbam")),
    Row("region MLP", "heavy", "region", _region_head(ra_nn.MLPScorer), grid=(4, 4)),
    Row("multi-scale", "heavy", "multiscale", _multiscale(), grid=(4, 4)),
)

LARGE_ROWS = (
    Row("plain CNN", "large", "none", _classifier(head=None, **_NARROW)),
    Row("CBAM", "large", "spatial", _classifier(head=None, attention="cbam", **_NARROW)),
    Row("region MLP", "large", "region", _region_head(ra_nn.MLPScorer, **_NARROW),
        grid=(4, 4)),
    Row("multi-scale", "large", "multiscale", _multiscale(**_NARROW), grid=(4, 4)),
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
            _region_head(ra_nn.MLPScorer, backbone="resnet18"), grid=(4, 4)),
        Row("ResNet-18 + multi-scale", name, "multiscale", _multiscale(backbone="resnet18"),
            grid=(4, 4)),
    ))
