"""What the config files share: the `get_config(arg)` argument parser and the model args.

A config file's `get_config(arg)` receives the text after ':' of
`--config experiments/configs/cluttered.py:attention=cbam,head=none` (ml_collections'
`config_flags.DEFINE_config_file`), as in big_vision: comma-separated `key=value` pairs,
a bare `key` meaning `key=True`.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from regionatt_jax.train.config import base_config

#: The model args of a `RegionAttentionClassifier` config and their defaults: attention
#: after every backbone stage ('' none; 'se', 'eca', 'cbam', 'coordinate'); the head
#: ('region', 'multiscale', or 'none' for global average pooling); the head's region
#: scorer ('' the head's default MLP; a key of `regionatt_jax.nn.SCORERS`).
MODEL_ARGS = {"attention": "", "head": "region", "scorer": ""}


def _convert(key: str, text: str, default: Any) -> Any:
  """`text` as the type of `default` (bool, int, float or str)."""
  if isinstance(default, bool):
    if text.lower() not in ("true", "false", "1", "0"):
      raise ValueError(f"config arg {key!r} must be a bool (True/False), got {text!r}")
    return text.lower() in ("true", "1")
  try:
    return type(default)(text)
  except ValueError:
    raise ValueError(f"config arg {key!r} must be of type {type(default).__name__}, "
                     f"got {text!r}") from None


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a `get_config` argument, `"k1=v1,k2=v2,flag"`, against `defaults`.

  Args:
    arg: the text after ':' of `--config file.py:...`; None or '' gives the defaults.
    **defaults: every key the config file takes, with its default value; a value is
      converted to its default's type.

  Returns:
    A ConfigDict of `defaults` updated from `arg`.

  Raises:
    ValueError: a key `defaults` lacks, or a value of the wrong type.
  """
  args = ml_collections.ConfigDict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, text = item.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config arg {key!r} in {arg!r}; known: {sorted(defaults)}")
    args[key] = _convert(key, text if "=" in item else "True", defaults[key])
  return args


def set_model_args(config: ml_collections.ConfigDict, args: ml_collections.ConfigDict
                   ) -> None:
  """Sets attention, head and scorer (`MODEL_ARGS`) of a `RegionAttentionClassifier`."""
  kwargs = config.model.kwargs
  if args.attention:
    kwargs.attention = args.attention
  if args.head not in ("region", "multiscale", "none"):
    raise ValueError(f"config arg head must be 'region', 'multiscale' or 'none', got "
                     f"{args.head!r}")
  if args.head != "region":  # 'region' is the model's default head.
    kwargs.head = None if args.head == "none" else args.head
  if args.scorer:
    if args.head == "none":
      raise ValueError(f"config arg scorer={args.scorer!r} needs a head ('region' or "
                       "'multiscale'), got head='none'")
    kwargs.head_kwargs = {"scorer": args.scorer}


def resnet18_recipe(dataset: str, steps: int, arg: str | None,
                    batch_size: int = 128) -> ml_collections.ConfigDict:
  """ResNet-18 with a 4x4 region-attention head on a real-image dataset (GPU/TPU).

  The one recipe of `cifar10.py`, `eurosat.py`, `patch_camelyon.py` and the ablation's
  real-image tables: SGD with momentum 0.9, learning rate 0.1 per 256 images, weight
  decay 5e-4, 500 warmup steps, cosine decay, no gradient clipping, bfloat16
  activations, flips. SGD rather than AdamW because this is the published ResNet
  recipe for these image sizes (He et al., 2016), known to train ResNet-18 to about
  95 % on CIFAR-10; AdamW 3e-3 is the cluttered-digits setting of a 60k-parameter
  SmallCNN at 350-1000 steps and was never run on ResNet-18.

  Args:
    dataset: the tfds name, e.g. "cifar10".
    steps: training steps.
    arg: model args (`MODEL_ARGS`), e.g. "attention=se,head=none".
    batch_size: images per step over all devices.

  Returns:
    The config.
  """
  args = parse_arg(arg, **MODEL_ARGS)
  config = base_config()
  config.dataset.name = dataset
  config.dataset.augment = True
  config.model.kwargs.backbone = "resnet18"
  set_model_args(config, args)
  config.train.steps = steps
  config.train.global_batch_size = batch_size
  config.train.eval_batch_size = 500
  config.train.compute_dtype = "bfloat16"
  config.train.log_every = 100
  config.train.eval_every = 2000
  config.train.checkpoint_every = 2000
  config.optim.name = "sgd"
  config.optim.learning_rate = 0.1 * batch_size / 256
  config.optim.weight_decay = 5e-4
  config.optim.warmup_steps = 500
  config.optim.clip_norm = 0.0
  return config

