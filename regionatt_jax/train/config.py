"""The training configuration: its schema, defaults and validation.

Every key a run can set lives in `base_config()`; experiment files in
`experiments/configs/` start from it and change values, never add keys. Only
`model.kwargs` is free-form: it is checked against the chosen model's fields.
`validate_config` runs before any work so a typo fails in milliseconds, naming the key.
"""

from __future__ import annotations

import math
import os
from typing import Any, Mapping

import ml_collections

COMPUTE_DTYPES = ("float32", "bfloat16")
OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
NONFINITE_POLICIES = ("stop", "skip")


def base_config() -> ml_collections.ConfigDict:
  """Returns the schema of a training run with its default values."""
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.dataset = ml_collections.ConfigDict()
  config.dataset.name = "cluttered_digits"
  # '' means $TFDS_DATA_DIR or ~/tensorflow_datasets (tfds's own default), so the
  # offline datasets are built once per machine and shared by every run.
  config.dataset.data_dir = ""
  config.dataset.augment = False

  config.model = ml_collections.ConfigDict()
  config.model.name = "RegionAttentionClassifier"
  # Constructor arguments of the model (see `regionatt_jax.nn.build_model`); its
  # `num_classes` and `dtype` come from the dataset and `train.compute_dtype`. A region
  # head's scorer is named in `kwargs.head_kwargs.scorer` (e.g. "gated").
  config.model.kwargs = ml_collections.ConfigDict()
  # A torchvision/timm ResNet state_dict (.pth, .pt or .safetensors) to start the
  # backbone from ('' = random init); its architecture must be model.kwargs.backbone
  # with backbone_kwargs.stem 'imagenet'. Attention modules and the head start fresh.
  config.model.pretrained = ""

  config.train = ml_collections.ConfigDict()
  config.train.steps = 1000
  config.train.global_batch_size = 64
  config.train.eval_batch_size = 256
  # bfloat16 computes activations in bf16; params and optimizer state stay float32.
  config.train.compute_dtype = "float32"
  config.train.log_every = 50
  config.train.eval_every = 250
  config.train.checkpoint_every = 250
  config.train.keep_checkpoints = 2
  config.train.keep_best = 1
  config.train.progress_bar = True
  config.train.num_figures = 8
  # A step whose loss or gradient has a NaN/Inf is never applied. 'stop' then raises
  # naming the step (the last checkpoint stays the last good one); 'skip' goes on and
  # counts it (metric `nonfinite`, summary `nonfinite_steps`).
  config.train.nonfinite = "stop"

  config.optim = ml_collections.ConfigDict()
  config.optim.name = "adamw"
  config.optim.learning_rate = 1e-3
  config.optim.schedule = "cosine"
  config.optim.warmup_steps = 100
  config.optim.end_learning_rate_ratio = 0.0
  config.optim.weight_decay = 1e-4
  config.optim.momentum = 0.9  # sgd only
  config.optim.b1 = 0.9  # adamw only
  config.optim.b2 = 0.999  # adamw only
  config.optim.clip_norm = 1.0  # 0 disables clipping
  # Micro-batches per optimizer update (optax.MultiSteps). `train.steps` counts
  # micro-batches of `train.global_batch_size` examples.
  config.optim.grad_accum_steps = 1
  # The backbone's own parameters (not the attention modules inside it) learn at this
  # multiple of the learning rate, e.g. 0.1 when fine-tuning a pretrained backbone.
  config.optim.backbone_lr_multiplier = 1.0

  config.mesh = ml_collections.ConfigDict()
  # Devices along the 'model' axis; the rest form the 'data' axis.
  config.mesh.model_axis_size = 1
  return config


_POSITIVE_INTS = (
    "train.steps", "train.global_batch_size", "train.eval_batch_size",
    "train.log_every", "train.eval_every", "train.checkpoint_every",
    "train.keep_checkpoints", "optim.grad_accum_steps", "mesh.model_axis_size",
)
_NON_NEGATIVE = (
    "train.keep_best", "train.num_figures", "optim.warmup_steps",
    "optim.weight_decay", "optim.clip_norm", "optim.end_learning_rate_ratio",
    "optim.backbone_lr_multiplier",
)
# Constructor arguments, checked against the constructor by `regionatt_jax.nn.build_model`.
_FREE_FORM = ("model.kwargs",)
_CHOICES = {
    "train.compute_dtype": COMPUTE_DTYPES,
    "optim.name": OPTIMIZERS,
    "optim.schedule": SCHEDULES,
    "train.nonfinite": NONFINITE_POLICIES,
}


def _get(config: ml_collections.ConfigDict, dotted: str) -> Any:
  value = config
  for part in dotted.split("."):
    value = value[part]
  return value


def _check_schema(config: Mapping[str, Any], schema: Mapping[str, Any], prefix: str):
  """Raises on keys `config` has and `schema` lacks, missing keys, or wrong types."""
  for key in config.keys():
    if key not in schema:
      raise ValueError(
          f"Unknown config key '{prefix}{key}'; known keys here: {sorted(schema.keys())}.")
  for key, expected in schema.items():
    name = f"{prefix}{key}"
    if key not in config:
      raise ValueError(f"Config key {name!r} is missing.")
    value = config[key]
    if name in _FREE_FORM:
      if not isinstance(value, Mapping):
        raise TypeError(f"Config key {name!r} must be a mapping, got {type(value).__name__}.")
      continue
    if isinstance(expected, Mapping):
      if not isinstance(value, Mapping):
        raise TypeError(f"Config key {name!r} must be a ConfigDict, got {type(value).__name__}.")
      _check_schema(value, expected, prefix=f"{name}.")
      continue
    # An int is an acceptable float (`learning_rate=1`), a bool is not an int.
    ok = isinstance(value, type(expected)) and not (
        isinstance(value, bool) and not isinstance(expected, bool))
    if isinstance(expected, float) and isinstance(value, int) and not isinstance(value, bool):
      ok = True
    if not ok:
      raise TypeError(
          f"Config key {name!r} must be of type {type(expected).__name__}, "
          f"got {value!r} of type {type(value).__name__}.")
    if isinstance(expected, float) and not math.isfinite(value):
      raise ValueError(f"Config key {name!r} must be a finite number, got {value!r}.")


def validate_config(config: ml_collections.ConfigDict, *, num_devices: int,
                    process_count: int = 1) -> None:
  """Checks keys, types and values of `config` before any work starts.

  Args:
    config: the run's configuration (see `base_config`).
    num_devices: the number of devices of the whole run (all hosts).
    process_count: the number of host processes.

  Raises:
    ValueError: an unknown or missing key, an impossible value, or a batch size the
      devices or hosts cannot split evenly; the message names the key.
    TypeError: a value of the wrong type; the message names the key.
  """
  _check_schema(config.to_dict(), base_config().to_dict(), prefix="")
  for name in _POSITIVE_INTS:
    if _get(config, name) <= 0:
      raise ValueError(f"Config key {name!r} must be positive, got {_get(config, name)}.")
  for name in _NON_NEGATIVE:
    if _get(config, name) < 0:
      raise ValueError(f"Config key {name!r} must be >= 0, got {_get(config, name)}.")
  if not config.optim.learning_rate > 0:
    raise ValueError(
        f"Config key 'optim.learning_rate' must be positive, got {config.optim.learning_rate}.")
  for name, choices in _CHOICES.items():
    if _get(config, name) not in choices:
      raise ValueError(f"Config key {name!r} must be one of {choices}, got {_get(config, name)!r}.")
  _check_pretrained(config.model.pretrained)
  if config.train.steps % config.optim.grad_accum_steps:
    raise ValueError(
        f"Config key 'train.steps' ({config.train.steps}) must be a multiple of "
        f"'optim.grad_accum_steps' ({config.optim.grad_accum_steps}).")
  model_axis = config.mesh.model_axis_size
  if num_devices % model_axis:
    raise ValueError(
        f"Config key 'mesh.model_axis_size' ({model_axis}) must divide the number of "
        f"devices ({num_devices}).")
  data_axis = num_devices // model_axis
  for name in ("train.global_batch_size", "train.eval_batch_size"):
    batch = _get(config, name)
    for parts, what in ((data_axis, "data-parallel devices"), (process_count, "processes")):
      if batch % parts:
        raise ValueError(
            f"Config key {name!r} ({batch}) must be divisible by the number of {what} "
            f"({parts}); use a multiple of {parts}.")


#: The file types `model.pretrained` may name: `torch.save`d state_dicts, safetensors.
PRETRAINED_SUFFIXES = (".pth", ".pt", ".safetensors")


def _check_pretrained(path: str) -> None:
  """A set `model.pretrained` names an existing file of a readable type (its contents are
  checked when the train state is created)."""
  if not path:
    return
  if not path.endswith(PRETRAINED_SUFFIXES):
    raise ValueError(f"Config key 'model.pretrained' must be a {' / '.join(PRETRAINED_SUFFIXES)} "
                     f"file, got {path!r}.")
  if not os.path.isfile(os.path.expanduser(path)):
    raise ValueError(f"Config key 'model.pretrained': no file {path!r}.")
