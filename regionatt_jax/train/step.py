"""One training step and one evaluation step: pure functions of state and batch.

Both are jitted by `jit_steps` with the state's shardings as output shardings and the
train state donated, so a step updates parameters in place on every device.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax

from regionatt_jax.nn import maps as maps_lib
from regionatt_jax.train.metrics import pointing_game_hits
from regionatt_jax.train.state import TrainState

Batch = Mapping[str, jax.Array]


def _model_kwargs(batch: Batch) -> dict[str, jax.Array]:
  """Bag datasets pass their instance mask `(B, N)` to the model as `mask=`."""
  return {"mask": batch["mask"]} if "mask" in batch else {}


def _variables(state: TrainState, params: Any) -> dict[str, Any]:
  variables = {"params": params}
  if state.batch_stats:
    variables["batch_stats"] = state.batch_stats
  return variables


def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer micro-step on a global batch.

  Args:
    state: the current state.
    batch: `'image'` `(B, H, W, C)` float32 (bags: `(B, N, h, w, C)` with `'mask'`
      `(B, N)`), `'label'` `(B,)` int32.

  Returns:
    The new state and scalar metrics `loss`, `accuracy`, `grad_norm`, `learning_rate`
    of this batch (means over the global batch) and `nonfinite` (1.0 when the loss or
    a gradient has a NaN/Inf: then params, batch stats and optimizer state are left as
    they were, and only `step` advances).
  """
  step_rng = jax.random.fold_in(state.rng, state.step)

  def loss_fn(params):
    logits, updates = state.apply_fn(
        _variables(state, params), batch["image"], train=True, **_model_kwargs(batch),
        rngs={"dropout": step_rng}, mutable=["batch_stats"])
    # Logits may be bfloat16 (compute dtype); the loss is always float32.
    logits = logits.astype(jnp.float32)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  grad_norm = optax.global_norm(grads)
  # The norm is NaN/Inf iff some gradient is (or their squares overflow float32).
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
  keep_old_unless_finite = lambda new, old: jax.tree.map(
      lambda n, o: jnp.where(finite, n, o), new, old)
  param_updates, opt_state = state.tx.update(grads, state.opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1,
      params=keep_old_unless_finite(optax.apply_updates(state.params, param_updates),
                                    state.params),
      batch_stats=keep_old_unless_finite(updates.get("batch_stats", state.batch_stats),
                                         state.batch_stats),
      opt_state=keep_old_unless_finite(opt_state, state.opt_state))
  metrics = dict(
      loss=loss,
      accuracy=jnp.mean(jnp.argmax(logits, -1) == batch["label"]),
      grad_norm=grad_norm,
      nonfinite=1.0 - finite.astype(jnp.float32),
      learning_rate=jnp.asarray(state.learning_rate(state.step), jnp.float32))
  return new_state, metrics


def infer(apply_fn: Callable[..., Any], variables: Mapping[str, Any], images: jax.Array,
          **model_kwargs) -> tuple[jax.Array, "jax.Array | None"]:
  """Inference-mode logits `(B, K)` float32 and attention maps `(B, H, W)` float32.

  The maps are the model's top-most sown `attention_map` at image resolution
  (`regionatt_jax.nn.attention_maps`); None for a model that sows none.

  Args:
    apply_fn: a model's `apply`.
    variables: its `{"params": ..., "batch_stats": ...}` (no batch stats without BatchNorm).
    images: `(B, H, W, C)` float32 in [-1, 1] (bags: `(B, N, h, w, C)`).
    **model_kwargs: passed to the model (a bag's `mask`).
  """
  logits, collections = apply_fn(variables, images, train=False, mutable=["intermediates"],
                                 **model_kwargs)
  intermediates = collections.get("intermediates", {})
  maps = (maps_lib.attention_maps(intermediates, images.shape[-3:-1])
          if maps_lib.has_attention_map(intermediates) else None)
  return logits.astype(jnp.float32), maps


def predict(state: TrainState, batch: Batch) -> tuple[jax.Array, "jax.Array | None"]:
  """`infer` with the state's model and variables on `batch['image']`."""
  return infer(state.apply_fn, _variables(state, state.params), batch["image"],
               **_model_kwargs(batch))


def eval_step(state: TrainState, batch: Batch) -> dict[str, jax.Array]:
  """Sums of evaluation metrics over the valid examples of a padded batch.

  Args:
    state: the state to evaluate.
    batch: `'image'`, `'label'`, `'example_mask'` `(B,)` bool (False on padding)
      and, on datasets with boxes, `'box'` `(B, 4)`.

  Returns:
    `count`, `correct`, `loss_sum` and, when the model has maps and the batch has
    boxes, `pointing_hits`: float32 scalars to be summed over batches.
  """
  logits, maps = predict(state, batch)
  valid = batch["example_mask"].astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
  sums = dict(
      count=valid.sum(),
      correct=((jnp.argmax(logits, -1) == batch["label"]) * valid).sum(),
      loss_sum=(losses * valid).sum())
  if maps is not None and "box" in batch:
    sums["pointing_hits"] = (pointing_game_hits(maps, batch["box"]) * valid).sum()
  return sums


def jit_steps(state: TrainState):
  """Jitted `(train_step, eval_step, predict)` keeping `state`'s shardings.

  The train step donates its input state; metrics come back replicated.
  """
  state_shardings = jax.tree.map(lambda leaf: leaf.sharding, state)
  train = jax.jit(train_step, donate_argnums=0, out_shardings=(state_shardings, None))
  return train, jax.jit(eval_step), jax.jit(predict)
