"""The optax optimizer of a run, built from `config.optim`."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import ml_collections
import optax


class Optimizer(NamedTuple):
  """The gradient transformation of a run and its learning-rate schedule.

  Attributes:
    tx: the full chain (clipping, optimizer, weight decay, accumulation).
    learning_rate: maps a micro-step (the `TrainState.step`) to the learning rate in
      effect at that step, for logging.
  """
  tx: optax.GradientTransformation
  learning_rate: optax.Schedule


def decay_mask(params: Any) -> Any:
  """Weight decay applies to kernels only: leaves of rank >= 2, not biases or norm scales."""
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def backbone_mask(params: Any) -> Any:
  """True on the backbone's own parameters: those under `params["backbone"]` outside the
  attention modules inside it (`attention`, `attention_<i>`), which a fine-tuned model
  adds to a pretrained backbone.

  Raises:
    ValueError: `params` has no "backbone".
  """
  if "backbone" not in params:
    raise ValueError(f"Config key 'optim.backbone_lr_multiplier' needs a model with a "
                     f"'backbone' submodule; its parameters have {sorted(params)}.")

  def own(path, _):
    names = [entry.key for entry in path]
    return names[0] == "backbone" and not any(n.startswith("attention") for n in names)

  return jax.tree_util.tree_map_with_path(own, params)


def make_schedule(optim: ml_collections.ConfigDict, num_updates: int) -> optax.Schedule:
  """Linear warmup to `optim.learning_rate`, then cosine decay or constant.

  Args:
    optim: the `config.optim` block.
    num_updates: the number of optimizer updates of the run (`train.steps /
      optim.grad_accum_steps`).

  Returns:
    A function of the optimizer update count.
  """
  peak = optim.learning_rate
  warmup = min(optim.warmup_steps, num_updates)
  if optim.schedule == "constant":
    decay = optax.constant_schedule(peak)
  else:
    decay = optax.cosine_decay_schedule(peak, max(num_updates - warmup, 1),
                                        alpha=optim.end_learning_rate_ratio)
  if not warmup:  # optax's warmup schedules start at 0 even with 0 warmup steps.
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def make_optimizer(config: ml_collections.ConfigDict) -> Optimizer:
  """Builds the optimizer chain of `config` (see `base_config` for the keys)."""
  optim = config.optim
  accum = optim.grad_accum_steps
  schedule = make_schedule(optim, config.train.steps // accum)
  if optim.name == "adamw":
    core = optax.adamw(schedule, b1=optim.b1, b2=optim.b2,
                       weight_decay=optim.weight_decay, mask=decay_mask)
  else:
    # SGD's decay enters as an L2 gradient term before momentum, as in torch.optim.SGD.
    core = optax.chain(
        optax.add_decayed_weights(optim.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=optim.momentum))
  if optim.backbone_lr_multiplier != 1:
    # Scaling the updates scales the learning rate, decoupled weight decay included.
    core = optax.chain(core, optax.masked(optax.scale(optim.backbone_lr_multiplier),
                                          backbone_mask))
  clip = optax.clip_by_global_norm(optim.clip_norm) if optim.clip_norm > 0 else optax.identity()
  tx = optax.chain(clip, core)
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum).gradient_transformation()
  return Optimizer(tx=tx, learning_rate=lambda step: schedule(step // accum))
