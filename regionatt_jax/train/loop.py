"""`train_and_evaluate(config, workdir)`: the main job, on one device or a pod.

The workdir holds `config.json`, `metrics.jsonl`, `tensorboard/`, `checkpoints/`,
`figures/` and `summary.json` (see `workdir.py`). Starting again with the same workdir
resumes from the latest checkpoint (params, optimizer, step, RNG and data position), so
the resumed run logs the same losses and ends with the same params as an uninterrupted
one.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from tqdm import tqdm

from regionatt_jax import data
from regionatt_jax import nn as ra_nn
from regionatt_jax.train import checkpoint as checkpoint_lib
from regionatt_jax.train import config as config_lib
from regionatt_jax.train import evaluate as evaluate_lib
from regionatt_jax.train import metrics as metrics_lib
from regionatt_jax.train import sharding as sharding_lib
from regionatt_jax.train import state as state_lib
from regionatt_jax.train import step as step_lib
from regionatt_jax.train import timer as timer_lib
from regionatt_jax.train import workdir as workdir_lib


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       model: nn.Module | None = None) -> dict[str, Any]:
  """Trains `config`'s model, evaluating on validation, then on test at the end.

  Args:
    config: see `regionatt_jax.train.config.base_config` for every key.
    workdir: where checkpoints, metrics, figures and the summary go; a workdir with a
      checkpoint resumes from it.
    model: a Flax module to train instead of the one `config.model` names (called as
      `model.apply(variables, images, train=...)`; `load` cannot rebuild it later).

  Returns:
    The summary (also written to `workdir/summary.json`): final train loss, val and
    test accuracy, test pointing-game accuracy (datasets with boxes), train images/s
    (`timer.py`), wall time, figure paths.

  Raises:
    ValueError / TypeError: a bad config (naming the key), or a workdir whose
      checkpoint does not fit this config's model; raised before anything is written.
      Also a workdir none of whose checkpoints can be read (damaged ones are skipped
      while an older one reads back; see `checkpoint.restore_newest_readable`).
    FloatingPointError: a step with a non-finite loss or gradient, when
      `train.nonfinite` is 'stop'; the message names the step.
  """
  start_time = time.time()
  config_lib.validate_config(config, num_devices=jax.device_count(),
                             process_count=jax.process_count())
  spec = data.dataset_spec(config.dataset.name)
  if model is None:
    model = ra_nn.build_model(config.model, spec.num_classes,
                              jnp.dtype(config.train.compute_dtype))
  data_dir = data.resolve_data_dir(config.dataset.data_dir)
  mesh = sharding_lib.make_mesh(config.mesh.model_axis_size)
  input_shape = (1, *spec.example_shape)
  abstract = state_lib.abstract_train_state(config, model, input_shape, mesh)
  manager = workdir_lib.checkpoint_manager(workdir, config)
  restored = workdir_lib.restore_latest(workdir, manager, abstract)
  if restored is None:  # Before anything is written: a bad pretrained file fails here.
    start_step, iterator_state = 0, None
    state = state_lib.create_train_state(
        config, model, jax.random.PRNGKey(config.seed), input_shape, mesh=mesh)
  else:
    start_step, state, iterator_state = restored

  data.prepare(spec.name, data_dir)
  if jax.process_index() == 0:
    workdir_lib.write_json(workdir, workdir_lib.CONFIG_FILE, config)
  train_iter = data.make_iterator(
      spec.name, "train", data_dir=data_dir, global_batch_size=config.train.global_batch_size,
      seed=config.seed, shuffle=True, augment=config.dataset.augment)
  if iterator_state is not None:
    train_iter.set_state(iterator_state)
  # Batches go to the devices two steps ahead, overlapping the transfer with compute.
  train_batches = data.prefetch_to_device(train_iter, size=2,
                                          sharding=sharding_lib.batch_sharding(mesh))
  train_fn, eval_fn, infer_fn = step_lib.jit_steps(state)

  def split_batches(split: str):
    return data.padded_batches(spec.name, split, data_dir=data_dir, seed=config.seed,
                               global_batch_size=config.train.eval_batch_size)

  writer = metrics_lib.MetricWriter(workdir)
  writer.truncate_after(start_step)
  try:
    state, stats = _train(
        state, train_fn, train_batches, start_step, config, manager, writer,
        evaluate_val=lambda s: evaluate_lib.evaluate(eval_fn, s, split_batches("validation"),
                                                     mesh))
    test = evaluate_lib.evaluate(eval_fn, state, split_batches("test"), mesh)
    writer.write(config.train.steps, "test", test)
    figures = evaluate_lib.save_figures(
        infer_fn, state, next(split_batches("test")), mesh,
        os.path.join(workdir, "figures"), config.train.num_figures
    ) if config.train.num_figures else []
  finally:
    # Also on a crash: let an in-flight checkpoint commit, so a restart resumes from it.
    manager.close()
    writer.close()
  summary = {
      "steps": config.train.steps, "resumed_from": start_step or None,
      "num_devices": jax.device_count(), "num_processes": jax.process_count(),
      **stats,
      "test_accuracy": test["accuracy"], "test_loss": test["loss"],
      "test_pointing_game": test.get("pointing_game"),
      "wall_time_s": time.time() - start_time, "figures": figures,
  }
  if jax.process_index() == 0:
    workdir_lib.write_json(workdir, workdir_lib.SUMMARY_FILE, summary)
  return summary


def _train(state, train_fn, batches, start_step: int, config, manager, writer,
           evaluate_val: Callable[[Any], dict[str, float]]) -> tuple[Any, dict[str, Any]]:
  """Steps `start_step..train.steps`, logging, evaluating and checkpointing on schedule.

  Returns:
    The final state and `first_train_loss`, `final_train_loss`, `final_val_accuracy`,
    `nonfinite_steps` and `train_images_per_sec` (see `timer.py`).
  """
  total, batch_size = config.train.steps, config.train.global_batch_size
  progress = tqdm(total=total, initial=start_step, desc="train", dynamic_ncols=True,
                  disable=not (jax.process_index() == 0 and config.train.progress_bar))
  timer = timer_lib.StepTimer()
  window: list[dict[str, jax.Array]] = []
  first_train = last_train = val = None
  nonfinite_steps = 0
  for step in range(start_step, total):
    state, step_metrics = train_fn(state, next(batches))
    window.append(step_metrics)
    timer.step(step_metrics)
    done = step + 1
    if config.train.nonfinite == "stop" and float(step_metrics["nonfinite"]):
      raise FloatingPointError(_nonfinite_message(done, step_metrics, manager))
    logs_now = done % config.train.log_every == 0 or done == total
    evaluates_now = done % config.train.eval_every == 0 or done == total
    saves_now = done % config.train.checkpoint_every == 0 or done == total
    if logs_now or evaluates_now or saves_now:
      with timer.paused(step_metrics):
        if logs_now:
          means = {k: float(v) for k, v in jax.device_get(
              jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *window)).items()}
          means.update(timer_lib.throughput(*timer.lap(), batch_size))
          writer.write(done, "train", means)
          nonfinite_steps += round(means["nonfinite"] * len(window))
          first_train, last_train, window = first_train or means, means, []
          progress.set_postfix(loss=f"{means['loss']:.4f}", acc=f"{means['accuracy']:.3f}")
        if evaluates_now:
          val = evaluate_val(state)
          writer.write(done, "val", val)
        if saves_now:
          checkpoint_lib.save(manager, done, state.checkpoint_items(), batches.get_state(),
                              val["accuracy"] if evaluates_now else None)
    progress.update(1)
  progress.close()
  return state, {
      "first_train_loss": first_train["loss"] if first_train else None,
      "final_train_loss": last_train["loss"] if last_train else None,
      "final_val_accuracy": val["accuracy"] if val else None,
      "nonfinite_steps": nonfinite_steps,
      "train_images_per_sec": timer_lib.throughput(*timer.total(), batch_size).get(
          "images_per_sec"),
  }


def _nonfinite_message(step: int, step_metrics: Mapping[str, jax.Array], manager) -> str:
  """Why the run stops at `step`, where its last good checkpoint is, and what to do."""
  manager.wait_until_finished()  # A save in flight is of an earlier, finite step.
  last = manager.latest_step()
  where = (f"The last checkpoint, step {last} in {manager.directory}, holds finite values "
           f"and a restart resumes from it." if last is not None else "No checkpoint was "
           f"written yet.")
  return (f"Non-finite loss or gradient at step {step} (loss {float(step_metrics['loss'])}, "
          f"gradient norm {float(step_metrics['grad_norm'])}); its update was not applied "
          f"and train.nonfinite='stop' ends the run. {where} Check the input data and the "
          f"learning rate, or set train.nonfinite='skip' to skip such steps and count them.")
