r"""The main job: train a model from a config file, evaluate it, save figures.

  python -m experiments.train --config experiments/configs/default.py \
      --workdir runs/default [--config.train.steps=200 ...]

Offline datasets (`cluttered_digits`, `digit_bags`) are built on first use into
`config.dataset.data_dir` (default `$TFDS_DATA_DIR` or `~/tensorflow_datasets`). Running
again with the same `--workdir` resumes from its latest checkpoint. On several hosts,
start the same command on each after setting up `jax.distributed` (see
`--distributed`).
"""

import json
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from regionatt_jax.train import loop

_CONFIG = config_flags.DEFINE_config_file("config", None, "Training config file.",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and outputs.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False,
    "Call jax.distributed.initialize() first (TPU pods, SLURM/Kubernetes GPU clusters "
    "detect coordinator and process ids from the environment).")
flags.mark_flags_as_required(["config", "workdir"])


def parse_flags(argv):
  """absl's parser, with an unknown `--config.<key>` reported like any other bad flag.

  For a key the config lacks, ml_collections raises AttributeError (naming the key)
  instead of a flags error, which would otherwise end the job with a traceback.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except AttributeError as error:
    cause = error.args[0] if error.args else error  # ml_collections wraps a KeyError
    message = " ".join(str(cause.args[0] if isinstance(cause, KeyError) else cause).split())
    overrides = [arg for arg in argv[1:] if arg.startswith("--config.")]
    sys.stderr.write(f"FATAL Flags parsing error: unknown config key {message} (in "
                     f"{overrides}); the config file lists the keys.\n")
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
  if _DISTRIBUTED.value:
    jax.distributed.initialize()
  summary = loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  if jax.process_index() == 0:
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
