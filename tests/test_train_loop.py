"""The main job end to end: outputs, exact resume, and refusing bad input untouched."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from regionatt_jax import data
from regionatt_jax import nn as ra_nn
from regionatt_jax import train
from regionatt_jax.train import loop
from regionatt_jax.train import metrics as metrics_lib
from tests import helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train_records(workdir):
  """Train-split metrics without the timing fields (those differ run to run)."""
  records = metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  return [{k: v for k, v in r.items() if k not in ("step_time_s", "images_per_sec")}
          for r in records if r["split"] in ("train", "val")]


def _final_state(workdir, step):
  restored = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(step), "state"))
  return restored


@pytest.mark.slow
def test_main_job_command_end_to_end(tmp_path, data_dir):
  """`python -m experiments.train` with the default config, shrunk from the command line."""
  workdir = tmp_path / "run"
  overrides = {
      "dataset.name": "cluttered_digits/tiny", "dataset.data_dir": data_dir,
      "model.kwargs.backbone_kwargs.features": "(16,32,32)", "train.steps": 40,
      "train.global_batch_size": 32, "train.eval_batch_size": 64, "train.log_every": 8,
      "train.eval_every": 20, "train.checkpoint_every": 20, "train.num_figures": 3,
      "train.progress_bar": False, "optim.warmup_steps": 2, "optim.learning_rate": 0.005,
  }
  command = [sys.executable, "-m", "experiments.train",
             "--config", "experiments/configs/default.py", f"--workdir={workdir}"]
  command += [f"--config.{key}={value}" for key, value in overrides.items()]
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]

  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["test_accuracy"] is not None and summary["test_pointing_game"] is not None
  assert len(summary["figures"]) == 3 and all(os.path.getsize(p) > 1000 for p in summary["figures"])
  records = metrics_lib.read_jsonl(str(workdir / "metrics.jsonl"))
  train = [r for r in records if r["split"] == "train"]
  assert [r["step"] for r in train] == list(range(8, 41, 8))
  assert train[-1]["loss"] < train[0]["loss"] - 0.1, [r["loss"] for r in train]
  assert {"loss", "accuracy", "learning_rate", "images_per_sec", "step_time_s"} <= set(train[0])
  assert [r["split"] for r in records if r["split"] != "train"] == ["val", "val", "test"]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["20", "40"]
  assert os.listdir(workdir / "tensorboard")
  assert json.loads((workdir / "config.json").read_text())["train"]["steps"] == 40


@pytest.mark.slow
def test_resume_equals_uninterrupted_run(tmp_path, tiny_config, monkeypatch):
  """Train 2k steps straight; crash after k, restart: same params, same logged losses."""
  config = tiny_config
  config.train.steps = 8
  config.train.checkpoint_every = 4
  config.train.eval_every = 4
  straight = str(tmp_path / "straight")
  loop.train_and_evaluate(config, straight)

  class Crash(Exception):
    pass

  def crash_at_the_7th_batch(count, batch):  # after checkpoint 4, before checkpoint 8
    if count == 7:
      raise Crash()
    return batch

  resumed = str(tmp_path / "resumed")
  make_iterator = data.make_iterator
  helpers.wrap_train_batches(monkeypatch, crash_at_the_7th_batch)
  with pytest.raises(Crash):
    loop.train_and_evaluate(config, resumed)
  assert sorted(os.listdir(os.path.join(resumed, "checkpoints"))) == ["4"]
  monkeypatch.setattr(data, "make_iterator", make_iterator)
  summary = loop.train_and_evaluate(config, resumed)

  assert summary["resumed_from"] == 4
  assert _train_records(resumed) == _train_records(straight)  # bitwise equal floats
  final_straight, final_resumed = _final_state(straight, 8), _final_state(resumed, 8)
  flat_straight = ocp.tree.to_flat_dict(final_straight)
  flat_resumed = ocp.tree.to_flat_dict(final_resumed)
  assert flat_straight.keys() == flat_resumed.keys()
  for key in flat_straight:
    np.testing.assert_array_equal(flat_resumed[key], flat_straight[key], err_msg=str(key))


def test_incompatible_checkpoint_is_refused_untouched(tmp_path, tiny_config):
  workdir = str(tmp_path / "run")
  config = tiny_config
  config.train.steps = 2
  loop.train_and_evaluate(config, workdir)
  before = helpers.snapshot(workdir)
  config.model.kwargs.backbone_kwargs = {"features": (4, 4)}  # was (4, 8)
  with pytest.raises(ValueError, match="incompatible model: .params/.*there.*new --workdir"):
    loop.train_and_evaluate(config, workdir)
  assert helpers.snapshot(workdir) == before


def test_a_module_passed_in_is_trained_and_load_rebuilds_the_configs_model(
    tmp_path, tiny_config):
  """`model=` trains that module; `load` returns the config's model with the
  checkpoint's variables, which reproduce the run's test accuracy."""
  config = tiny_config
  config.train.steps = 4
  summary = loop.train_and_evaluate(config, str(tmp_path / "custom"),
                                    model=helpers.TinyCNN(num_classes=10))
  params = ocp.StandardCheckpointer().restore(
      str(tmp_path / "custom" / "checkpoints" / "4" / "state"))["params"]
  assert set(params) == {"Conv_0", "BatchNorm_0", "Conv_1", "Dense_0"}  # TinyCNN's

  workdir = str(tmp_path / "run")
  summary = loop.train_and_evaluate(config, workdir)
  model, variables, loaded_config = train.load(workdir)
  assert isinstance(model, ra_nn.RegionAttentionClassifier)
  assert loaded_config.to_dict() == json.loads(config.to_json())
  correct = count = 0
  for batch in data.padded_batches(config.dataset.name, "test", data_dir=config.dataset.data_dir,
                                   global_batch_size=config.train.eval_batch_size):
    logits = model.apply(variables, batch["image"], train=False)
    valid = batch["example_mask"]
    correct += int(np.sum(np.argmax(logits, -1)[valid] == batch["label"][valid]))
    count += int(valid.sum())
  test = [r for r in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
          if r["split"] == "test"]
  assert count == test[0]["num_examples"] > 0
  assert correct / count == pytest.approx(summary["test_accuracy"], abs=1e-9)


@pytest.mark.parametrize("mutate, error, match", [
    (lambda c: c.train.__setattr__("evl_every", 3), ValueError, "'train.evl_every'"),
    (lambda c: c.model.kwargs.__setattr__("featurs", 3), ValueError, "'model.kwargs.featurs'"),
    (lambda c: c.model.__setattr__("name", "ResNet9000"), ValueError, "'model.name'"),
    (lambda c: c.train.__setattr__("steps", 0), ValueError, "'train.steps'"),
])
def test_bad_config_fails_before_writing(tmp_path, tiny_config, mutate, error, match):
  config = tiny_config
  mutate(config)
  workdir = tmp_path / "run"
  with pytest.raises(error, match=match):
    loop.train_and_evaluate(config, str(workdir))
  assert not workdir.exists()


def test_unknown_dataset_fails_before_writing(tmp_path, tiny_config):
  config = tiny_config
  config.dataset.data_dir = str(tmp_path / "tfds")
  config.dataset.name = "cluttered_digitz"
  with pytest.raises(ValueError, match="cluttered_digitz"):
    loop.train_and_evaluate(config, str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()
