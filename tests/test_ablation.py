"""Tests of experiments/ablation.py and its table: configs, metrics, summaries, smoke run."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import ablation
from experiments.configs import ablation as table
from regionatt_jax import data
from regionatt_jax import nn as ra_nn
from regionatt_jax.train import config as config_lib


def test_table_has_every_method_seeds_and_unique_keys():
  assert len(table.SEEDS) >= 3
  keys = [row.key for row in table.ROWS]
  assert len(keys) == len(set(keys))
  names = {row.name for row in table.CLUTTERED_ROWS}
  for method in ("plain CNN", "AttentionNet", "SE", "ECA", "CBAM", "coordinate",
                 "region conv", "region MLP", "region gated", "region recurrent",
                 "region self-attention", "multi-scale"):
    assert method in names
  poolings = {(row.name.split()[0], row.train_examples) for row in table.BAG_ROWS}
  assert poolings == {(p, n) for p in ("attention", "gated", "mean", "max")
                      for n in table.BAG_TRAIN_SIZES}
  assert len(table.BAG_TRAIN_SIZES) >= 3


@pytest.mark.parametrize("smoke", [False, True])
def test_every_row_gives_a_valid_config_and_model(smoke):
  for row in table.ROWS:
    config = ablation.make_config(row, 7, data_dir="/data", smoke=smoke)
    config_lib.validate_config(config, num_devices=1)
    assert config.seed == 7
    assert config.train.eval_every == config.train.steps == config.train.checkpoint_every
    spec = data.dataset_spec(config.dataset.name)
    model = ra_nn.build_model(config.model, spec.num_classes)
    assert type(model).__name__ == config.model.name
    # Every key the row sets lands in the config.
    for dotted, value in row.overrides.items():
      node = config
      for part in dotted.split("."):
        node = node[part]
      if dotted != "model.kwargs":
        assert node == value


def test_real_dataset_rows_give_valid_configs_without_the_data():
  for row in table.REAL_ROWS:
    config = ablation.make_config(row, 0, data_dir="/data")
    config_lib.validate_config(config, num_devices=1)
    spec = data.dataset_spec(config.dataset.name)
    assert ra_nn.build_model(config.model, spec.num_classes).backbone == "resnet18"
  assert {row.table for row in table.REAL_ROWS} == {"cifar10", "eurosat", "patch_camelyon"}
  assert not {r.key for r in table.REAL_ROWS} & {r.key for r in table.ROWS}  # not default


def test_bag_rows_read_their_own_training_set_size():
  row = next(r for r in table.BAG_ROWS if r.train_examples == 50)
  config = ablation.make_config(row, 0, data_dir="/data")
  assert config.dataset.name == "digit_bags/16px"
  assert config.dataset.data_dir == ablation.bag_data_dir("/data", 50)
  assert config.model.kwargs.pooling == row.overrides["model.kwargs"]["pooling"]
  smoke = ablation.make_config(row, 0, data_dir="/data", smoke=True)
  assert smoke.dataset.name == "digit_bags/tiny" and smoke.dataset.data_dir == "/data"


def test_unknown_override_key_is_named():
  row = table.Row("bad", "cluttered", "none", {"train.stepz": 3})
  with pytest.raises(ValueError, match="train.stepz"):
    ablation.make_config(row, 0, data_dir="/data")


def test_every_model_initializes_abstractly():
  for row in table.ROWS:
    config = ablation.make_config(row, 0, data_dir="/data", smoke=True)
    spec = data.dataset_spec(config.dataset.name)
    model = ra_nn.build_model(config.model, spec.num_classes)
    shape = (2,) + ((spec.max_bag_size,) if spec.max_bag_size else ()) + spec.image_shape
    variables = jax.eval_shape(lambda m=model, s=shape: m.init(jax.random.PRNGKey(0),
                                                             jnp.zeros(s)))
    assert "params" in variables, row.key


def test_image_rows_of_a_table_differ_only_in_their_attention():
  """Every row but the seed's AttentionNet shares its table's backbone and optimizer."""
  for _, _, rows in table.IMAGE_TABLES:
    configs = [ablation.make_config(row, 0, data_dir="/data") for row in rows
               if row.family != "seed"]
    backbones = {str(c.model.kwargs.get("backbone_kwargs")) for c in configs}
    optimizers = {str(c.optim) for c in configs}
    assert len(backbones) == 1 and len(optimizers) == 1, rows[0].table
    heads = {(c.model.kwargs.get("head"), str(c.model.kwargs.get("head_kwargs")),
              c.model.kwargs.get("attention")) for c in configs}
    assert len(heads) == len(configs)  # ... and no two rows are the same model


def _instance_hits_loop(weights, mask, labels, target):
  hits = []
  for w, m, l in zip(weights, mask, labels):
    best, best_i = -np.inf, None
    for i in range(len(w)):
      if m[i] and w[i] > best:
        best, best_i = w[i], i
    hits.append(l[best_i] == target)
  return np.array(hits)


def test_instance_hits_ignore_padding_and_match_loop_reference():
  rng = np.random.default_rng(0)
  weights = rng.random((50, 7))
  mask = np.arange(7)[None] < rng.integers(1, 8, size=(50, 1))
  labels = rng.integers(0, 10, size=(50, 7))
  weights[~mask] = 10.0  # padding holds the largest weights and must not count
  np.testing.assert_array_equal(ablation.instance_hits(weights, mask, labels, 9),
                                _instance_hits_loop(weights, mask, labels, 9))


def test_claim_skips_runs_held_by_live_processes_and_takes_over_dead_ones(tmp_path):
  lock = tmp_path / ablation.LOCK_FILE
  lock.write_text(str(os.getppid()))  # a live process other than this one
  assert not ablation.claim(str(tmp_path))
  dead = 2 ** 22 + 12345  # above the default pid_max: no such process
  lock.write_text(str(dead))
  assert ablation.claim(str(tmp_path))
  assert lock.read_text() == str(os.getpid())
  row = table.CLUTTERED_ROWS[0]
  held = tmp_path / "out" / row.key / "seed_0"
  held.mkdir(parents=True)
  (held / ablation.LOCK_FILE).write_text(str(os.getppid()))
  assert ablation.run_one(row, 0, str(tmp_path / "out"), data_dir="/data") is None


def _result(row, seed, accuracy, **extra):
  return {"row": row.key, "name": row.name, "table": row.table, "family": row.family,
          "train_examples": row.train_examples, "seed": seed, "test_accuracy": accuracy,
          **extra}


def test_summarize_mean_and_sample_std_per_row():
  plain, region = table.CLUTTERED_ROWS[0], table.CLUTTERED_ROWS[7]
  results = [_result(plain, s, a) for s, a in enumerate([0.5, 0.6, 0.7])]
  results += [_result(region, 0, 0.9, test_pointing_game=0.8)]
  summary = ablation.summarize(results, ["test_accuracy", "test_pointing_game"])
  assert summary[plain.key]["n"] == 3
  assert summary[plain.key]["test_accuracy"]["mean"] == pytest.approx(0.6)
  assert summary[plain.key]["test_accuracy"]["std"] == pytest.approx(
      np.sqrt(((0.5 - 0.6) ** 2 + (0.7 - 0.6) ** 2) / 2))
  assert "test_pointing_game" not in summary[plain.key]
  assert summary[plain.key]["test_accuracy"]["min"] == 0.5
  assert summary[plain.key]["test_accuracy"]["max"] == 0.7
  assert summary[region.key]["test_accuracy"] == {"mean": 0.9, "std": 0.0, "min": 0.9,
                                                  "max": 0.9}


def test_compare_says_whether_a_difference_exceeds_the_spread():
  rows = table.CLUTTERED_ROWS[:3]
  summary = {
      rows[0].key: {"n": 3, "test_accuracy": {"mean": 0.50, "std": 0.02}},
      rows[1].key: {"n": 3, "test_accuracy": {"mean": 0.60, "std": 0.03}},  # +10 > 5
      rows[2].key: {"n": 3, "test_accuracy": {"mean": 0.53, "std": 0.02}},  # +3 < 4
  }
  lines = ablation.compare(summary, rows, "test_accuracy", rows[0])
  assert lines[0].startswith(f"- Best test accuracy: **{rows[1].name}**, 60.0")
  assert f"{rows[1].name} vs plain CNN: +10.0 points; exceeds" in lines[1]
  assert f"{rows[2].name} vs plain CNN: +3.0 points; is within" in lines[2]
  summary[rows[2].key]["n"] = 1
  assert "one seed so far" in ablation.compare(summary, rows, "test_accuracy", rows[0])[2]


def test_clutter_gaps_tabulate_gain_over_the_plain_cnn_per_dataset():
  entry = lambda mean, std: {"test_accuracy": {"mean": mean, "std": std}}
  summary = {table.CLUTTERED_ROWS[0].key: entry(0.40, 0.01),
             next(r for r in table.CLUTTERED_ROWS if r.name == "region MLP").key:
                 entry(0.55, 0.02),
             table.HEAVY_ROWS[0].key: entry(0.20, 0.03)}
  lines = ablation.clutter_gaps(summary).splitlines()
  assert lines[0] == ("| accuracy gain over plain CNN (points) | CBAM | region MLP | "
                      "multi-scale |")
  assert lines[2] == "| cluttered_digits/64 | - | +15.0 (spread 3.0) | - |"
  assert lines[3] == "| cluttered_digits/64_heavy | - | - | - |"


def test_localization_surprises_flag_accurate_models_that_point_elsewhere():
  rows = table.CLUTTERED_ROWS[6:8]
  summary = {rows[0].key: {"test_accuracy": {"mean": 0.9, "std": 0}, "test_pointing_game":
                           {"mean": 0.3, "std": 0}},
             rows[1].key: {"test_accuracy": {"mean": 0.9, "std": 0}, "test_pointing_game":
                           {"mean": 0.85, "std": 0}}}
  lines = ablation.localization_surprises(summary, rows)
  assert len(lines) == 1 and rows[0].name in lines[0]


@pytest.mark.slow
def test_bag_subset_has_the_requested_training_bags(tmp_path):
  import tensorflow_datasets as tfds
  data_dir = ablation.prepare_bag_subset(str(tmp_path), 20)
  assert ablation.prepare_bag_subset(str(tmp_path), 20) == data_dir  # built once
  train = tfds.data_source("digit_bags/16px", split="train", data_dir=data_dir,
                           download=False)
  assert len(train) == 20
  assert sum(int(train[i]["label"]) for i in range(20)) == 10  # balanced
  test = tfds.data_source("digit_bags/16px", split="test", data_dir=data_dir, download=False)
  assert len(test) == 1000


@pytest.mark.slow
def test_smoke_run_trains_measures_reports_and_resumes(tmp_path, capsys):
  rows = "cluttered_plain_cnn|cluttered_region_mlp|bags_attention"
  args = ["--smoke", "--rows", rows, "--out", str(tmp_path / "runs"),
          "--data_dir", str(tmp_path / "tfds"), "--workers", "2"]
  assert ablation.main(args) == 0
  for key in ("cluttered_plain_cnn", "cluttered_region_mlp", "bags_attention_pooling_n50"):
    with open(tmp_path / "runs" / key / "seed_0" / "result.json") as f:
      result = json.load(f)
    assert result["steps"] == 1 and result["params"] > 0
    assert 0 <= result["test_accuracy"] <= 1
  with open(tmp_path / "runs" / "bags_attention_pooling_n50" / "seed_0" / "result.json") as f:
    bags = json.load(f)
  assert 0 <= bags["test_auc"] <= 1 and 0 <= bags["instance_localization"] <= 1
  with open(tmp_path / "runs" / "cluttered_plain_cnn" / "seed_0" / "result.json") as f:
    assert json.load(f)["test_pointing_game"] is None  # no attention map
  report = (tmp_path / "runs" / "RESULTS.md").read_text()
  assert "| region MLP | region |" in report and "| attention pooling | 50 |" in report
  assert "Wall clock of the training command: " in report and "(3 runs, 2 workers" in report
  figures = os.listdir(tmp_path / "runs" / "results")
  assert "attention_cluttered_region_mlp.png" in figures
  assert "attention_cluttered_plain_cnn.png" not in figures  # nothing to overlay
  capsys.readouterr()
  # A second call finds every run finished and trains nothing.
  assert ablation.main(args) == 0
  assert "3 of 3 runs already finished; running 0" in capsys.readouterr().out


def test_pointing_ceiling_points_at_the_centre_of_the_region_holding_the_box_centre():
  # 64x64 image, 4x4 grid: 16-px regions with centres at 8, 24, 40, 56.
  boxes = np.array([[16, 16, 32, 32],    # exactly region (1, 1): its centre (24, 24) is in
                    [16, 16, 18, 18],    # a corner of region (1, 1): (24, 24) is outside
                    [0, 0, 64, 64],      # the whole image
                    [50, 2, 63, 14]])    # region (3, 0), centre (56, 8): inside
  assert ablation.pointing_ceiling(boxes, (64, 64), (4, 4)) == 0.75
  assert ablation.pointing_ceiling(boxes[1:2], (64, 64), (32, 32)) == 1.0  # fine grid
