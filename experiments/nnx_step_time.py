"""Train-step time of the NNX `RegionAttentionClassifier` against its Linen twin.

Both run Adam on the same batch with the same model (the one of docs/nnx.md: SmallCNN
(16, 32), gated region head 4x4, 32x32 grayscale images): Linen as `jax.jit` of
`jax.value_and_grad` + `optax` over `(params, batch_stats, opt_state)`, NNX as the
`nnx.jit` step of docs/nnx.md (`nnx.Optimizer`), and NNX as `jax.jit` over the state of
`nnx.split` (no per-call graph traversal). The variants run interleaved, `--steps` timed
steps each per round, `--rounds` rounds; it prints the median step time of each and its
ratio to Linen's.

    python -m experiments.nnx_step_time [--batch 64] [--rounds 5] [--steps 20]
"""

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from flax import nnx

import regionatt_jax.nn as rn
import regionatt_jax.nnx as rx

MODEL_KWARGS = dict(backbone_kwargs={"features": (16, 32)},
                    head_kwargs={"grid": (4, 4), "scorer": "gated"})


def _loss(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


def linen_step_fn(images, labels, tx):
  """A Linen step on `(params, batch_stats, opt_state)`, and its initial state."""
  model = rn.RegionAttentionClassifier(10, **MODEL_KWARGS)
  variables = model.init(jax.random.key(0), images)
  state = (variables["params"], variables["batch_stats"], tx.init(variables["params"]))

  @jax.jit
  def step(state, images, labels):
    params, batch_stats, opt_state = state

    def loss_fn(params):
      logits, updates = model.apply({"params": params, "batch_stats": batch_stats}, images,
                                    train=True, mutable=["batch_stats"])
      return _loss(logits, labels), updates["batch_stats"]

    (loss, batch_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), batch_stats, opt_state), loss

  return step, state


def _nnx_model_and_optimizer(tx):
  model = rx.RegionAttentionClassifier(1, 10, **MODEL_KWARGS, rngs=nnx.Rngs(0))
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def _nnx_train_step(model, optimizer, images, labels):
  loss, grads = nnx.value_and_grad(lambda m: _loss(m(images, train=True), labels))(model)
  optimizer.update(model, grads)
  return loss


def nnx_jit_step_fn(tx):
  """The `nnx.jit` step of docs/nnx.md; its state is `(model, optimizer)`."""
  step = nnx.jit(_nnx_train_step)
  model, optimizer = _nnx_model_and_optimizer(tx)
  return lambda state, images, labels: (state, step(*state, images, labels)), (model, optimizer)


def nnx_split_step_fn(tx):
  """The same step as a `jax.jit` function of the `nnx.split` state."""
  graphdef, state = nnx.split(_nnx_model_and_optimizer(tx))

  @jax.jit
  def step(state, images, labels):
    model, optimizer = nnx.merge(graphdef, state)
    loss = _nnx_train_step(model, optimizer, images, labels)
    return nnx.state((model, optimizer)), loss

  return step, state


def time_steps(step, state, images, labels, steps: int) -> tuple[float, object]:
  """Median seconds per step over `steps` steps, and the state after them."""
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    state, loss = step(state, images, labels)
    jax.block_until_ready(loss)
    times.append(time.perf_counter() - start)
  return statistics.median(times), state


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--batch", type=int, default=64)
  parser.add_argument("--rounds", type=int, default=5)
  parser.add_argument("--steps", type=int, default=20)
  args = parser.parse_args(argv)
  images = jax.random.normal(jax.random.key(1), (args.batch, 32, 32, 1))
  labels = jax.random.randint(jax.random.key(2), (args.batch,), 0, 10)
  tx = optax.adam(1e-3)
  variants = {"linen": linen_step_fn(images, labels, tx), "nnx.jit": nnx_jit_step_fn(tx),
              "nnx split+jax.jit": nnx_split_step_fn(tx)}
  states = {name: state for name, (_, state) in variants.items()}
  for name, (step, _) in variants.items():  # compile outside the timed rounds
    _, states[name] = time_steps(step, states[name], images, labels, 2)
  medians = {name: [] for name in variants}
  for _ in range(args.rounds):
    for name, (step, _) in variants.items():
      seconds, states[name] = time_steps(step, states[name], images, labels, args.steps)
      medians[name].append(seconds)
  linen = statistics.median(medians["linen"])
  print(f"batch {args.batch}, {args.rounds} interleaved rounds of {args.steps} steps")
  for name, rounds in medians.items():
    median = statistics.median(rounds)
    print(f"{name:>18}: {1e3 * median:8.2f} ms/step (median), ratio to linen "
          f"{median / linen:.3f}; per-round medians "
          f"{', '.join(f'{1e3 * s:.2f}' for s in rounds)} ms")


if __name__ == "__main__":
  main()
