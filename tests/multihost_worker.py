"""Runs training pieces in a fresh process, for the multi-device and multi-host tests.

The device count is fixed when JAX starts, so these tests run this script in
subprocesses:

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multihost_worker \
      devices OUT.npz
  python -m tests.multihost_worker loop WORKDIR --data_dir=D --process_id=i \
      --num_processes=2 --port=P   # one per process; CPU collectives through gloo
  XLA_FLAGS=--xla_force_host_platform_device_count=2 python -m tests.multihost_worker \
      loop WORKDIR --data_dir=D --hosts=2   # one process reading both hosts' shards
  XLA_FLAGS=--xla_force_host_platform_device_count=8 python -m tests.multihost_worker \
      loop WORKDIR --data_dir=D --model_axis_size=2

`train_few_steps` is also what the tests run in their own single-device process as
the reference.
"""

import argparse
import hashlib
import json
import sys

import jax
import numpy as np

from regionatt_jax import data
from regionatt_jax.train import config as config_lib
from regionatt_jax.train import sharding as sharding_lib
from regionatt_jax.train import state as state_lib
from regionatt_jax.train import step as step_lib
from experiments.configs import tiny
from regionatt_jax.train import loop
from tests.helpers import TinyCNN, synthetic_batches

GLOBAL_BATCH = 16
NUM_STEPS = 3


def train_few_steps(mesh, num_steps: int = NUM_STEPS) -> dict:
  """`num_steps` train steps on fixed synthetic global batches. Returns the params as
  numpy."""
  config = config_lib.base_config()
  config.train.steps = NUM_STEPS
  config.optim.warmup_steps = 0
  # SGD, not Adam: Adam's first steps divide by |g|, so float noise in near-zero
  # gradient entries (a different summation order per device count) becomes
  # lr-sized differences, hiding real errors.
  config.optim.name = "sgd"
  config.optim.learning_rate = 0.1
  state = state_lib.create_train_state(config, TinyCNN(), jax.random.PRNGKey(0),
                                       (1, 16, 16, 3), mesh=mesh)
  train, _, _ = step_lib.jit_steps(state)
  for batch in synthetic_batches(num_steps, GLOBAL_BATCH, seed=7):
    state, _ = train(state, sharding_lib.global_batch(batch, mesh))
  flat, _ = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in flat}


def _devices(out: str) -> None:
  """8 devices: data-parallel, data x model, and one device; plus a bad batch size."""
  results = {
      "data8": train_few_steps(sharding_lib.make_mesh(1)),
      "data4_model2": train_few_steps(sharding_lib.make_mesh(2)),
      "one_device": train_few_steps(sharding_lib.make_mesh(1, devices=jax.devices()[:1])),
  }
  np.savez(out, **{f"{run}|{name}": value for run, params in results.items()
                   for name, value in params.items()})
  config = config_lib.base_config()
  abstract = state_lib.abstract_train_state(config, TinyCNN(), (1, 16, 16, 3),
                                            sharding_lib.make_mesh(2))
  split_leaves = [leaf.shape for leaf in jax.tree.leaves(abstract)
                  if sharding_lib.MODEL_AXIS in leaf.sharding.spec]
  config.train.global_batch_size = 12
  try:
    config_lib.validate_config(config, num_devices=jax.device_count())
    batch_error = None
  except ValueError as error:
    batch_error = str(error)
  print(json.dumps({"batch_error": batch_error, "model_split_leaves": split_leaves}))


def loop_config(data_dir: str):
  """`experiments/configs/tiny.py` for 4 steps of 16 examples (AdamW), checkpoints at 2
  and 4, one evaluation at the end."""
  config = tiny.get_config()
  config.dataset.data_dir = data_dir
  config.train.update(steps=4, global_batch_size=16, log_every=2, eval_every=4,
                      num_figures=2)
  return config


def record_train_examples(path: str, hosts: int | None = None) -> None:
  """Patches `data.make_iterator` so that the train split's examples are recorded.

  Each batch's images are written to `path` as one line of per-example SHA-1 digests.
  With `hosts`, this one process reads the shards of `hosts` hosts (as
  `process_index=i, process_count=hosts` would) and concatenates them in host order,
  which is how a multi-host run lays out its global batch.
  """
  make_iterator = data.make_iterator

  class Recorded:
    """The train iterator(s); `get_state` is the first host's (these runs do not resume)."""

    def __init__(self, shards):
      self.shards = shards

    def __iter__(self):
      return self

    def __next__(self):
      parts = [next(shard) for shard in self.shards]
      batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
      with open(path, "a") as f:
        f.write(json.dumps([hashlib.sha1(image.tobytes()).hexdigest()
                            for image in batch["image"]]) + "\n")
      return batch

    def get_state(self):
      return self.shards[0].get_state()

  def recorded(name, split, **kwargs):
    if split != "train":
      return make_iterator(name, split, **kwargs)
    if hosts is None:
      return Recorded([make_iterator(name, split, **kwargs)])
    return Recorded([make_iterator(name, split, process_index=i, process_count=hosts,
                                   **kwargs) for i in range(hosts)])

  data.make_iterator = recorded


def main(argv) -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("mode", choices=["devices", "loop"])
  parser.add_argument("out")
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--data_dir", default="")
  parser.add_argument("--hosts", type=int, default=None)
  parser.add_argument("--model_axis_size", type=int, default=1)
  args = parser.parse_args(argv)
  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{args.port}",
                               num_processes=args.num_processes, process_id=args.process_id)
  if args.mode == "devices":
    _devices(args.out)
  else:
    config = loop_config(args.data_dir)
    config.mesh.model_axis_size = args.model_axis_size
    record_train_examples(f"{args.out}.examples.{jax.process_index()}", args.hosts)
    summary = loop.train_and_evaluate(config, args.out)
    print("SUMMARY " + json.dumps(summary))
  if args.num_processes > 1:
    jax.distributed.shutdown()


if __name__ == "__main__":
  main(sys.argv[1:])
