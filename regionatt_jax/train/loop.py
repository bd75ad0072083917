"""`train_and_evaluate(config, workdir)`: the main job, on one device or a pod.

The workdir holds `config.json`, `metrics.jsonl`, `tensorboard/`, `checkpoints/`,
`figures/` and `summary.json`. Starting again with the same workdir resumes from the
latest checkpoint (params, optimizer, step, RNG and data position), so the resumed run
logs the same losses and ends with the same params as an uninterrupted one.
"""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from regionatt_jax import viz
from regionatt_jax.train import checkpoint as checkpoint_lib
from regionatt_jax.train import config as config_lib
from regionatt_jax.train import metrics as metrics_lib
from regionatt_jax.train import sharding as sharding_lib
from regionatt_jax.train import state as state_lib
from regionatt_jax.train import step as step_lib

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def model_constructors() -> dict[str, type]:
  """`config.model.name` -> model class."""
  from regionatt_jax import nn as ra_nn  # pylint: disable=g-import-not-at-top
  return {
      "AttentionNet": ra_nn.AttentionNet,
      "RegionAttentionClassifier": ra_nn.RegionAttentionClassifier,
      "MILClassifier": ra_nn.MILClassifier,
  }


def attention_maps_or_none(intermediates: Mapping[str, Any], image_hw: tuple[int, int]):
  """`(B, H, W)` maps from a model's sown attention; None for a model without any."""
  from regionatt_jax.nn import maps  # pylint: disable=g-import-not-at-top
  try:
    return maps.attention_maps(intermediates, image_hw)
  except ValueError:  # Nothing sown: a plain CNN or a channel-attention model.
    return None


def scorer_constructors() -> dict[str, type]:
  """`config.model.scorer` -> region scorer class."""
  from regionatt_jax import nn as ra_nn  # pylint: disable=g-import-not-at-top
  return {
      "mlp": ra_nn.MLPScorer,
      "conv": ra_nn.ConvScorer,
      "gated": ra_nn.GatedScorer,
      "recurrent": ra_nn.RecurrentScorer,
      "self_attention": ra_nn.SelfAttentionScorer,
  }


def _fields(cls: type) -> set[str]:
  return set(getattr(cls, "__dataclass_fields__", {}))


def _scorer(config: ml_collections.ConfigDict, head: str | None, dtype):
  """The scorer `config.model.scorer` names, in the form the head takes."""
  constructors = scorer_constructors()
  name = config.model.scorer
  if name not in constructors:
    raise ValueError(
        f"Config key 'model.scorer' must be one of {sorted(constructors)} or '', got {name!r}.")
  cls = constructors[name]
  kwargs = dict(config.model.scorer_kwargs.to_dict())
  config_lib.check_kwargs(cls, kwargs, key="model.scorer_kwargs")
  if head == "multiscale":  # It builds one scorer per grid from a factory.
    return functools.partial(cls, **kwargs)
  if head != "region":
    raise ValueError(f"Config key 'model.scorer' needs model.kwargs.head 'region' or "
                     f"'multiscale', got {head!r}.")
  return cls(dtype=dtype, **kwargs) if "dtype" in _fields(cls) else cls(**kwargs)


def build_model(config: ml_collections.ConfigDict, num_classes: int):
  """The model `config.model` names, with `num_classes` and the compute dtype filled in."""
  constructors = model_constructors()
  name = config.model.name
  if name not in constructors:
    raise ValueError(
        f"Config key 'model.name' must be one of {sorted(constructors)}, got {name!r}.")
  cls = constructors[name]
  kwargs = dict(config.model.kwargs.to_dict())
  config_lib.check_kwargs(cls, kwargs)
  fields = _fields(cls)
  dtype = COMPUTE_DTYPES[config.train.compute_dtype]
  if "num_classes" in fields:
    kwargs.setdefault("num_classes", num_classes)
  if "dtype" in fields:
    kwargs["dtype"] = dtype
  if config.model.scorer:
    if "head_kwargs" not in fields:
      raise ValueError(f"Config key 'model.scorer' is for models with a region-attention "
                       f"head; {name} has none.")
    head = kwargs.get("head", _field_default(cls, "head"))
    kwargs["head_kwargs"] = {**(kwargs.get("head_kwargs") or {}),
                             "scorer": _scorer(config, head, dtype)}
  elif config.model.scorer_kwargs:
    raise ValueError("Config key 'model.scorer_kwargs' is set but 'model.scorer' is not.")
  return cls(**kwargs)


def _field_default(cls: type, field: str) -> Any:
  """The default value of a dataclass field of `cls`."""
  return cls.__dataclass_fields__[field].default


def resolve_data_dir(data_dir: str) -> str:
  """`''` -> `$TFDS_DATA_DIR` or `~/tensorflow_datasets` (tfds's own default)."""
  if data_dir:
    return os.path.expanduser(data_dir)
  return os.environ.get("TFDS_DATA_DIR", os.path.expanduser("~/tensorflow_datasets"))


def _as_model_batch(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Bag datasets call their input 'bag'; the steps read 'image'."""
  batch = dict(batch)
  if "bag" in batch:
    batch["image"] = batch.pop("bag")
  batch.pop("instance_labels", None)
  return batch


def _padded(batch: Mapping[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
  """Pads the leading axis to `size` and adds `'example_mask'` (False on padding)."""
  count = len(batch["label"])
  out = {key: np.concatenate([value, np.zeros((size - count,) + value.shape[1:], value.dtype)])
         for key, value in batch.items()}
  out["example_mask"] = np.arange(size) < count
  return out


def _any_process(flag: bool) -> bool:
  """Whether `flag` holds on any process (hosts must run the same number of steps)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _local_batches(data, spec, config, data_dir: str, split: str) -> Iterator[dict]:
  """Batches of one pass over `split` for this host, padded to the local eval batch.

  Hosts may hold different numbers of examples; a host that has run out keeps
  feeding fully padded batches until every host has.
  """
  local_size = config.train.eval_batch_size // jax.process_count()
  iterator = data.make_iterator(
      spec.name, split, data_dir=data_dir, global_batch_size=config.train.eval_batch_size,
      seed=config.seed, shuffle=False, num_epochs=1, drop_remainder=False)
  template = None
  while True:
    batch = next(iterator, None)
    if not _any_process(batch is not None):
      return
    if batch is not None:
      batch = _as_model_batch(batch)
      template = template or {k: v[:0] for k, v in batch.items()}
    elif template is None:  # This host's shard was empty from the start.
      raise ValueError(f"Split {split!r} of {spec.name} has fewer examples than processes.")
    yield _padded(batch if batch is not None else template, local_size)


def evaluate(eval_fn, state, data, spec, config, data_dir: str, split: str,
             mesh) -> dict[str, float]:
  """Accuracy, loss and (with boxes and maps) pointing-game accuracy over a split."""
  totals = None
  for batch in _local_batches(data, spec, config, data_dir, split):
    sums = eval_fn(state, sharding_lib.global_batch(batch, mesh))
    totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
  totals = jax.device_get(totals)
  count = max(float(totals["count"]), 1.0)
  result = {"accuracy": totals["correct"] / count, "loss": totals["loss_sum"] / count,
            "num_examples": float(totals["count"])}
  if "pointing_hits" in totals:
    result["pointing_game"] = totals["pointing_hits"] / count
  return {key: float(value) for key, value in result.items()}


def save_figures(infer_fn, state, data, spec, config, data_dir: str, mesh,
                 directory: str) -> list[str]:
  """Attention figures of the first `train.num_figures` test examples (main host)."""
  if not config.train.num_figures:
    return []
  batch = next(_local_batches(data, spec, config, data_dir, "test"))
  logits, maps = infer_fn(state, sharding_lib.global_batch(batch, mesh))
  # Rows of the global batch: process 0's examples come first.
  logits = multihost_utils.process_allgather(logits, tiled=True)
  maps = None if maps is None else multihost_utils.process_allgather(maps, tiled=True)
  if jax.process_index() != 0 or batch["image"].ndim != 4:
    return []
  count = min(config.train.num_figures, int(batch["example_mask"].sum()))
  paths = []
  for i in range(count):
    title = f"label {int(batch['label'][i])}, predicted {int(np.argmax(logits[i]))}"
    paths.append(viz.save_attention_figure(
        os.path.join(directory, f"test_{i:02d}.png"), batch["image"][i],
        None if maps is None else np.asarray(maps[i]),
        batch["box"][i] if "box" in batch else None, title))
  return paths


def _prepare_data(data, name: str, data_dir: str) -> None:
  """Builds an offline dataset on the main host first, then lets the others see it."""
  if jax.process_index() == 0:
    data.prepare(name, data_dir)
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices("regionatt_jax: dataset prepared")
    data.prepare(name, data_dir)  # A no-op on a shared filesystem.


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Trains `config`'s model, evaluating on validation, then on test at the end.

  Args:
    config: see `regionatt_jax.train.config.base_config` for every key.
    workdir: where checkpoints, metrics, figures and the summary go; a workdir with a
      checkpoint resumes from it.

  Returns:
    The summary (also written to `workdir/summary.json`): final train loss, val and
    test accuracy, test pointing-game accuracy (datasets with boxes), train images/s
    (after compilation), wall time, figure paths.

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
  from regionatt_jax import data  # pylint: disable=g-import-not-at-top
  spec = data.dataset_spec(config.dataset.name)
  model = build_model(config, spec.num_classes)
  data_dir = resolve_data_dir(config.dataset.data_dir)
  mesh = sharding_lib.make_mesh(config.mesh.model_axis_size)
  sample_shape = (spec.max_bag_size,) + spec.image_shape if spec.max_bag_size else spec.image_shape
  input_shape = (1,) + tuple(sample_shape)

  abstract = state_lib.abstract_train_state(config, model, input_shape, mesh)
  manager = checkpoint_lib.make_manager(
      os.path.join(os.path.abspath(workdir), "checkpoints"),
      keep_last=config.train.keep_checkpoints, keep_best=config.train.keep_best)
  restored = checkpoint_lib.restore_newest_readable(
      manager, abstract.checkpoint_items(),
      damaged_directory=os.path.join(os.path.abspath(workdir), "damaged_checkpoints"))

  _prepare_data(data, spec.name, data_dir)
  is_main = jax.process_index() == 0
  if is_main:
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json(indent=2))

  train_iter = data.make_iterator(
      spec.name, "train", data_dir=data_dir, global_batch_size=config.train.global_batch_size,
      seed=config.seed, shuffle=True, augment=config.dataset.augment)
  if restored is None:
    start_step = 0
    state = state_lib.create_train_state(
        config, model, jax.random.PRNGKey(config.seed), input_shape, mesh=mesh)
  else:
    start_step, items, iterator_state = restored
    state = abstract.replace(**items)
    train_iter.set_state(iterator_state)

  train_fn, eval_fn, infer_fn = step_lib.jit_steps(state, attention_maps_or_none)
  writer = metrics_lib.MetricWriter(workdir)
  writer.truncate_after(start_step)
  try:
    state, stats = _train(state, train_fn, train_iter, start_step, config, mesh, manager,
                          writer, evaluate_val=lambda s: evaluate(
                              eval_fn, s, data, spec, config, data_dir, "validation", mesh))
    test = evaluate(eval_fn, state, data, spec, config, data_dir, "test", mesh)
    writer.write(config.train.steps, "test", test)
    figures = save_figures(infer_fn, state, data, spec, config, data_dir, mesh,
                           os.path.join(workdir, "figures"))
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
  if is_main:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
  return summary


def _train(state, train_fn, train_iter, start_step: int, config, mesh, manager, writer,
           evaluate_val) -> tuple[Any, dict[str, Any]]:
  """Steps `start_step..train.steps`, logging, evaluating and checkpointing on schedule.

  Returns:
    The final state and `first_train_loss`, `final_train_loss`, `final_val_accuracy`
    and `train_images_per_sec` (after the compiling first step, without the time spent
    logging, evaluating and saving).
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  total, batch_size = config.train.steps, config.train.global_batch_size
  progress = tqdm(total=total, initial=start_step, desc="train", dynamic_ncols=True,
                  disable=not (jax.process_index() == 0 and config.train.progress_bar))
  window: list[dict[str, jax.Array]] = []
  window_start = time.time()
  first_train = last_train = val = None
  steady_start, steady_steps, pause_seconds = None, 0, 0.0
  nonfinite_steps = 0
  for step in range(start_step, total):
    batch = sharding_lib.global_batch(_as_model_batch(next(train_iter)), mesh)
    state, step_metrics = train_fn(state, batch)
    window.append(step_metrics)
    done = step + 1
    if config.train.nonfinite == "stop" and float(step_metrics["nonfinite"]):
      raise FloatingPointError(_nonfinite_message(done, step_metrics, manager))
    if steady_start is None:
      jax.block_until_ready(step_metrics)
      steady_start = time.time()
    else:
      steady_steps += 1
    logs_now = done % config.train.log_every == 0 or done == total
    evaluated_now = done % config.train.eval_every == 0 or done == total
    saves_now = done % config.train.checkpoint_every == 0 or done == total
    if logs_now or evaluated_now or saves_now:
      # Steps run ahead asynchronously: wait for them here, so that their time counts as
      # training and not as the pause for logging, evaluation and checkpoints.
      jax.block_until_ready(step_metrics)
    pause_start = time.time()
    if logs_now:
      means = {k: float(v) for k, v in jax.device_get(
          jax.tree.map(lambda *xs: jnp.mean(jnp.stack(xs)), *window)).items()}
      elapsed = time.time() - window_start
      means.update(step_time_s=elapsed / len(window),
                   images_per_sec=batch_size * len(window) / elapsed)
      writer.write(done, "train", means)
      nonfinite_steps += round(means["nonfinite"] * len(window))
      first_train = first_train or means
      last_train = means
      progress.set_postfix(loss=f"{means['loss']:.4f}", acc=f"{means['accuracy']:.3f}")
      window, window_start = [], time.time()
    if evaluated_now:
      val = evaluate_val(state)
      writer.write(done, "val", val)
    if saves_now:
      checkpoint_lib.save(manager, done, state.checkpoint_items(), train_iter.get_state(),
                          val["accuracy"] if evaluated_now else None)
    pause_seconds += time.time() - pause_start
    progress.update(1)
  progress.close()
  train_seconds = time.time() - steady_start - pause_seconds if steady_start else 0.0
  return state, {
      "first_train_loss": first_train["loss"] if first_train else None,
      "final_train_loss": last_train["loss"] if last_train else None,
      "final_val_accuracy": val["accuracy"] if val else None,
      "nonfinite_steps": nonfinite_steps,
      "train_images_per_sec": batch_size * steady_steps / train_seconds if steady_steps else None,
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
