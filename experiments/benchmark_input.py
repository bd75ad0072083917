"""Input-pipeline throughput against a small CNN's training step.

Run: `python -m experiments.benchmark_input [--name cluttered_digits/64]
[--data_dir /tmp/regionatt_tfds] [--batch 128]`. Prints the build time of the offline
dataset, examples/s of `data.make_iterator` for each thread count and augmentation,
and the time of one jit-compiled Adam step of a 3-conv CNN on the same batches.
"""

import argparse
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from experiments import timing
from regionatt_jax import data


class SmallCNN(nn.Module):
  """Three strided 3x3 convs (32, 64, 128) and a linear head."""

  num_classes: int

  @nn.compact
  def __call__(self, x):
    for features in (32, 64, 128):
      x = nn.relu(nn.Conv(features, (3, 3), strides=2)(x))
    return nn.Dense(self.num_classes)(x.mean(axis=(1, 2)))


def pipeline_examples_per_s(name, data_dir, batch, num_batches, **kwargs):
  iterator = data.make_iterator(name, "train", data_dir=data_dir, global_batch_size=batch,
                                seed=0, **kwargs)
  next(iterator)  # start the threads
  start = time.perf_counter()
  for _ in range(num_batches):
    next(iterator)
  return num_batches * batch / (time.perf_counter() - start)


def train_step_seconds(name, data_dir, batch, num_steps):
  spec = data.dataset_spec(name)
  model = SmallCNN(spec.num_classes)
  optimizer = optax.adam(1e-3)
  params = model.init(jax.random.key(0), jnp.zeros((1, *spec.image_shape)))
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, images, labels):
    def loss_fn(params):
      logits = model.apply(params, images)
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    grads = jax.grad(loss_fn)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state

  batches = data.make_iterator(name, "train", data_dir=data_dir, global_batch_size=batch,
                               seed=0)
  # Fetched before timing, one per warm-up and timed step: this times the step alone.
  fetched = iter([next(batches) for _ in range(num_steps + 2)])
  state = {"params": params, "opt_state": opt_state}

  def one_step():
    b = next(fetched)
    state["params"], state["opt_state"] = step(state["params"], state["opt_state"],
                                               b["image"], b["label"])
    jax.block_until_ready(state["params"])

  return timing.median_ms(one_step, warmup=2, iters=num_steps)["median_ms"] / 1e3



def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--name", default="cluttered_digits/64")
  parser.add_argument("--data_dir", default="/tmp/regionatt_tfds")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--num_batches", type=int, default=100)
  args = parser.parse_args()
  env = timing.environment({"jax": jax.__version__})
  print(f"{env['cpu']}, {env['cores']} cores, jax {jax.__version__}")

  start = time.perf_counter()
  data.prepare(args.name, args.data_dir)
  print(f"prepare {args.name}: {time.perf_counter() - start:.1f} s "
        "(a no-op when already built)")
  for augment in (False, True):
    for num_threads in (1, 2, 4):
      rate = pipeline_examples_per_s(args.name, args.data_dir, args.batch,
                                     args.num_batches, augment=augment,
                                     num_threads=num_threads)
      print(f"pipeline augment={augment} num_threads={num_threads}: {rate:,.0f} examples/s")
  seconds = train_step_seconds(args.name, args.data_dir, args.batch, 20)
  print(f"SmallCNN train step, batch {args.batch}: {seconds * 1e3:.1f} ms = "
        f"{args.batch / seconds:,.0f} examples/s")


if __name__ == "__main__":
  main()
