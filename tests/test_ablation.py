"""Tests of the ablation (`experiments/ablation/`) and its table: configs, metrics,
summaries, the report, a smoke run."""

import argparse
import dataclasses
import json
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import timing
from experiments.ablation import __main__ as cli
from experiments.ablation import measure
from experiments.ablation import report
from experiments.ablation import run
from experiments.configs import ablation as table
from experiments.configs import cifar10
from regionatt_jax import data
from regionatt_jax import nn as ra_nn

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_table_has_every_method_seeds_and_unique_keys():
  assert all(len(row.seeds) >= 3 for row in table.ROWS)
  assert len(table.TABLES["cluttered"].seeds) >= 5
  keys = [row.key for row in table.ROWS]
  assert len(keys) == len(set(keys))
  labels = {row.label for row in table.CLUTTERED_ROWS}
  for method in ("plain CNN", "AttentionNet", "region conv", "region MLP", "region gated",
                 "region recurrent", "region self-attention", "multi-scale",
                 "plain CNN (residual)", "region MLP (residual)", "multi-scale (residual)"):
    assert method in labels
  for module in ("SE", "ECA", "CBAM", "coordinate"):  # published placement, and the extra
    assert {f"{module} (residual)", f"{module} (on path)"} <= labels
  poolings = {(row.name.rsplit(" pooling")[0], row.train_examples) for row in table.BAG_ROWS}
  assert poolings == {(p, n) for p in ("attention", "gated", "mean", "max", "mi-Net mean",
                                       "mi-Net max") for n in table.BAG_TRAIN_SIZES}
  assert len(table.BAG_TRAIN_SIZES) >= 3


@pytest.mark.parametrize("smoke", [False, True])
def test_every_row_gives_a_valid_config_and_model(smoke):
  for row in table.ROWS:
    config = table.make_config(row, 7, data_dir="/data", smoke=smoke)
    assert config.seed == 7
    assert config.train.checkpoint_every == config.train.eval_every
    if not smoke:  # a learning curve of CURVE_POINTS evaluations, the last at the end
      assert config.train.steps // config.train.eval_every == table.CURVE_POINTS
    assert not config.train.progress_bar and config.train.num_figures == 0
    spec = data.dataset_spec(config.dataset.name)
    model = ra_nn.build_model(config.model, spec.num_classes)
    assert type(model).__name__ == config.model.name
  steps = {(row.table, row.steps): table.make_config(row, 0, data_dir="/data").train.steps
           for row in table.ROWS}
  assert steps == {("cluttered", None): table.STEPS, ("heavy", None): table.HEAVY_STEPS,
                   ("large", None): table.STEPS, ("bags", None): table.BAG_STEPS,
                   ("cluttered", table.ATTENTION_NET_STEPS): table.ATTENTION_NET_STEPS}
  assert table.STEPS >= 2000  # the main table trains for thousands of steps


def test_rows_build_the_model_their_name_says():
  kwargs = {row.label: table.make_config(row, 0, data_dir="/data").model.kwargs
            for row in table.CLUTTERED_ROWS}
  assert kwargs["plain CNN"].head is None and "attention" not in kwargs["plain CNN"]
  assert kwargs["SE (on path)"].attention == "se" and kwargs["SE (on path)"].head is None
  assert kwargs["CBAM (on path)"].attention == "cbam"
  assert "placement" not in kwargs["CBAM (on path)"].backbone_kwargs
  for label in ("plain CNN (residual)", "CBAM (residual)", "region MLP (residual)"):
    assert kwargs[label].backbone_kwargs.placement == "residual", label
  assert kwargs["CBAM (residual)"].attention == "cbam"
  assert kwargs["region gated"].head_kwargs.scorer == "gated"
  assert kwargs["region self-attention"].head_kwargs.scorer == "self_attention"
  assert kwargs["multi-scale"].head == "multiscale"
  assert dict(kwargs["AttentionNet"]) == {"features": (32, 64)}
  for row in table.LARGE_ROWS[1:]:  # the 128 canvas: five stages, an 8x8 map again
    assert table.make_config(row, 0, data_dir="/data").model.kwargs.backbone_kwargs.features \
        == (16, 16, 32, 64, 64)


def test_each_attention_row_is_compared_with_the_plain_cnn_of_its_backbone():
  rows = table.CLUTTERED_ROWS
  by_label = {row.label: row for row in rows}
  assert table.baseline_of(by_label["CBAM (residual)"], rows) is by_label["plain CNN (residual)"]
  assert table.baseline_of(by_label["CBAM (on path)"], rows) is by_label["plain CNN"]
  assert table.baseline_of(by_label["region MLP"], rows) is by_label["plain CNN"]
  assert table.baseline_of(by_label["plain CNN (residual)"], rows) is None
  assert table.baseline_of(by_label["AttentionNet"], rows) is None
  pairs = report.region_vs_published(rows)
  assert {(a.label, b.label) for a, b in pairs} == {
      (head, f"{module} (residual)") for head in ("region MLP (residual)",
                                                  "multi-scale (residual)")
      for module in ("SE", "ECA", "CBAM", "coordinate")}


def test_real_dataset_rows_use_the_recipe_of_the_real_image_configs():
  for row in table.REAL_ROWS:
    config = table.make_config(row, 0, data_dir="/data")
    spec = data.dataset_spec(config.dataset.name)
    assert ra_nn.build_model(config.model, spec.num_classes).backbone == "resnet18"
    if row.table == "cifar10":
      assert config.optim == cifar10.get_config().optim  # one recipe, no drift
  assert {row.table for row in table.REAL_ROWS} == {"cifar10", "eurosat", "patch_camelyon"}
  assert not {r.key for r in table.REAL_ROWS} & {r.key for r in table.ROWS}  # not default


def test_bag_rows_read_their_own_training_set_size():
  row = next(r for r in table.BAG_ROWS if r.train_examples == 50)
  config = table.make_config(row, 0, data_dir="/data")
  assert config.dataset.name == "digit_bags/16px"
  assert config.dataset.data_dir == table.bag_data_dir("/data", 50)
  assert config.model.kwargs.pooling == row.name.split()[0]
  assert "level" not in config.model.kwargs
  mi_net = next(r for r in table.BAG_ROWS if r.name == "mi-Net max")
  kwargs = table.make_config(mi_net, 0, data_dir="/data").model.kwargs
  assert (kwargs.pooling, kwargs.level) == ("max", "instance")
  smoke = table.make_config(row, 0, data_dir="/data", smoke=True)
  assert smoke.dataset.name == "digit_bags/tiny" and smoke.dataset.data_dir == "/data"


def test_unknown_override_key_and_config_arg_are_named(monkeypatch):
  monkeypatch.setitem(table.TABLES, "cluttered", dataclasses.replace(
      table.TABLES["cluttered"], overrides={"train.stepz": 3}))
  with pytest.raises(ValueError, match="train.stepz"):
    table.make_config(table.CLUTTERED_ROWS[0], 0, data_dir="/data")
  row = dataclasses.replace(table.HEAVY_ROWS[0], arg="atention=se")
  with pytest.raises(ValueError, match="atention"):
    table.make_config(row, 0, data_dir="/data")


def test_every_model_initializes_abstractly():
  for row in table.ROWS:
    config = table.make_config(row, 0, data_dir="/data", smoke=True)
    spec = data.dataset_spec(config.dataset.name)
    model = ra_nn.build_model(config.model, spec.num_classes)
    shape = (2, *spec.example_shape)
    variables = jax.eval_shape(lambda m=model, s=shape: m.init(jax.random.PRNGKey(0),
                                                             jnp.zeros(s)))
    assert "params" in variables, row.key


def test_image_rows_of_a_backbone_differ_only_in_their_attention():
  """Within a table, every row of one backbone (all but the seed's AttentionNet) shares
  its widths, placement and optimizer with that backbone's plain CNN."""
  for _, rows in table.IMAGE_TABLES:
    for residual in (False, True):
      configs = [table.make_config(row, 0, data_dir="/data") for row in rows
                 if row.family != "seed" and row.residual == residual]
      backbones = {str(c.model.kwargs.get("backbone_kwargs")) for c in configs}
      optimizers = {str(c.optim) for c in configs}
      assert len(backbones) <= 1 and len(optimizers) <= 1, rows[0].table
      heads = {(c.model.kwargs.get("head", "region"), str(c.model.kwargs.get("head_kwargs")),
                c.model.kwargs.get("attention")) for c in configs}
      assert len(heads) == len(configs)  # ... and no two rows are the same model


def test_jobs_are_seed_major_with_each_tables_seeds():
  rows = [table.CLUTTERED_ROWS[0], table.HEAVY_ROWS[0]]
  jobs = [(row.table, seed) for row, seed in run.jobs_of(rows, smoke=False)]
  assert jobs == [("cluttered", 0), ("heavy", 0), ("cluttered", 1), ("heavy", 1),
                  ("cluttered", 2), ("heavy", 2), ("cluttered", 3), ("cluttered", 4)]
  assert [(row.table, seed) for row, seed in run.jobs_of(rows, smoke=True)] == [
      ("cluttered", 0), ("heavy", 0)]


def test_learning_curve_reads_the_validation_records_in_order(tmp_path):
  records = [{"step": 10, "split": "train", "loss": 2.0, "accuracy": 0.1},
             {"step": 10, "split": "val", "loss": 1.5, "accuracy": 0.4},
             {"step": 20, "split": "val", "loss": 1.0, "accuracy": 0.6},
             {"step": 20, "split": "test", "loss": 1.0, "accuracy": 0.55}]
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
  assert run.learning_curve(str(tmp_path)) == {"step": [10, 20], "val_accuracy": [0.4, 0.6]}


def _instance_hits_loop(weights, mask, labels, target):
  hits = []
  for w, m, l in zip(weights, mask, labels):
    best = max(w[i] for i in range(len(w)) if m[i])
    tied = [i for i in range(len(w)) if m[i] and w[i] == best]
    hits.append(sum(l[i] == target for i in tied) / len(tied))
  return np.array(hits)


def test_instance_hits_ignore_padding_and_match_loop_reference():
  rng = np.random.default_rng(0)
  weights = rng.random((50, 7))
  mask = np.arange(7)[None] < rng.integers(1, 8, size=(50, 1))
  labels = rng.integers(0, 10, size=(50, 7))
  weights[~mask] = 10.0  # padding holds the largest weights and must not count
  weights[:10] = 1 / 7  # uniform weights (mean pooling): every real instance ties
  weights[10:20, :2] = 2.0  # two tied maxima
  hits = measure.instance_hits(weights, mask, labels, 9)
  np.testing.assert_allclose(hits, _instance_hits_loop(weights, mask, labels, 9))
  # Uniform weights score the bag's fraction of targets, not whether instance 0 is one.
  np.testing.assert_allclose(hits[:10], [np.mean(l[m] == 9) for l, m in zip(labels[:10],
                                                                             mask[:10])])
  empty = measure.instance_hits(weights[:1], np.zeros((1, 7), bool), labels[:1], 9)
  np.testing.assert_array_equal(empty, [0.0])  # no real instance: 0, not nan


def test_claim_skips_runs_held_by_live_processes_and_takes_over_dead_ones(tmp_path):
  lock = tmp_path / run.LOCK_FILE
  lock.write_text(str(os.getppid()))  # a live process other than this one
  assert not run.claim(str(tmp_path))
  dead = 2 ** 22 + 12345  # above the default pid_max: no such process
  lock.write_text(str(dead))
  assert run.claim(str(tmp_path))
  assert lock.read_text() == str(os.getpid())
  row = table.CLUTTERED_ROWS[0]
  held = tmp_path / "out" / row.key / "seed_0"
  held.mkdir(parents=True)
  (held / run.LOCK_FILE).write_text(str(os.getppid()))
  assert run.run_one(row, 0, str(tmp_path / "out"), data_dir="/data") is None


def _result(row, seed, accuracy, **extra):
  return {"row": row.key, "name": row.name, "table": row.table, "family": row.family,
          "train_examples": row.train_examples, "seed": seed, "test_accuracy": accuracy,
          **extra}


def _current(row, seed, accuracy, **extra):
  """A cluttered row's result at the table's budget: 2000 steps of 32 images."""
  assert row.table == "cluttered"
  return _result(row, seed, accuracy, steps=table.STEPS, batch_size=32,
                 dataset="cluttered_digits/64", **extra)


def _write_run(out, result):
  """Writes `result` where a finished run of `out` keeps it."""
  workdir = out / result["row"] / f"seed_{result['seed']}"
  workdir.mkdir(parents=True)
  (workdir / run.RESULT_FILE).write_text(json.dumps(result))


def _document(runs, sessions=()):
  """A previous document with these runs and sessions (one command)."""
  return {"command": "python -m experiments.ablation", "runs": list(runs),
          "sessions": list(sessions)}


def test_is_current_needs_the_row_seed_and_budget_of_the_table():
  plain = table.CLUTTERED_ROWS[0]
  assert run.is_current(_current(plain, 4, 0.5))
  assert not run.is_current({**_current(plain, 0, 0.5), "steps": 350})  # the first report
  assert not run.is_current({**_current(plain, 0, 0.5), "batch_size": 64})
  assert not run.is_current({**_current(plain, 0, 0.5), "dataset": "cluttered_digits/128"})
  assert not run.is_current(_current(plain, 5, 0.5))  # not a seed of the table
  assert not run.is_current({**_current(plain, 0, 0.5), "row": "cluttered_gone"})
  heavy = table.HEAVY_ROWS[0]
  assert run.is_current({**_result(heavy, 0, 0.5), "steps": table.HEAVY_STEPS,
                         "batch_size": 32, "dataset": "cluttered_digits/64_heavy"})


def test_recorded_runs_of_the_current_budget_are_skipped_and_kept(tmp_path, monkeypatch,
                                                                   capsys):
  plain, region = table.CLUTTERED_ROWS[0], table.CLUTTERED_ROWS[2]
  previous = _document([_current(plain, 0, 0.5), {**_current(region, 0, 0.6), "steps": 350}])
  trained = []
  monkeypatch.setattr(run, "run_one", lambda row, seed, out, **_: trained.append(
      (row.key, seed)))
  args = argparse.Namespace(out=str(tmp_path / "out"), workers=0, data_dir="/data",
                            smoke=False)
  assert run.run_all([(plain, 0), (region, 0)], args, previous["runs"]) == []
  assert trained == [(region.key, 0)]  # the 350-step run trains again
  assert "1 of 2 runs already finished; running 1" in capsys.readouterr().out
  assert not os.path.exists(run.run_dir(args.out, plain, 0))  # nothing written for it
  _write_run(tmp_path / "out", _current(region, 0, 0.7))
  document = report.build_document(args.out, "cmd", previous)
  assert [(r["row"], r["seed"], r["steps"]) for r in document["runs"]] == [
      (plain.key, 0, table.STEPS), (region.key, 0, table.STEPS)]
  assert "left out 1 of the 2 runs of the earlier document" in capsys.readouterr().out
  assert document["summary"][plain.key]["test_accuracy"]["mean"] == 0.5


def test_a_command_stopped_early_has_recorded_its_wall_clock(tmp_path, monkeypatch):
  plain, region = table.CLUTTERED_ROWS[0], table.CLUTTERED_ROWS[2]
  monkeypatch.setattr(run, "prepare_datasets", lambda *_: None)

  def train_then_stop(row, seed, out, **_):
    if row is region:
      raise KeyboardInterrupt  # the command is stopped during its second run
  monkeypatch.setattr(run, "run_one", train_then_stop)
  args = argparse.Namespace(out=str(tmp_path), workers=0, data_dir="/data", smoke=False)
  with pytest.raises(KeyboardInterrupt):
    run.train_table([plain, region], "cmd", args)
  [session] = run.read_sessions(str(tmp_path))
  assert session["trained"] == 1 and session["command"] == "cmd"
  assert session["runs"] == 2 * len(table.MAIN_SEEDS) and session["minutes"] >= 0
  run.record_session(str(tmp_path), {**session, "trained": 2})  # replaced, not appended
  assert [s["trained"] for s in run.read_sessions(str(tmp_path))] == [2]
  assert f"1 of 10 planned runs, 0 workers, {timing.cpu_name()}, started" in (
      report._session_text([session]))


def test_a_run_of_out_wins_over_the_same_run_of_the_previous_document(tmp_path):
  plain = table.CLUTTERED_ROWS[0]
  previous = _document([_current(plain, 0, 0.5), _current(plain, 1, 0.6)])
  _write_run(tmp_path, _current(plain, 0, 0.9))
  document = report.build_document(str(tmp_path), "cmd", previous)
  assert [(r["seed"], r["test_accuracy"]) for r in document["runs"]] == [(0, 0.9), (1, 0.6)]


def test_sessions_and_commands_are_not_repeated_when_building_twice(tmp_path):
  plain = table.CLUTTERED_ROWS[0]
  earlier = {"command": "python -m experiments.ablation", "started": "2026-12-01 10:00",
             "minutes": 60.0, "runs": 95, "workers": 2}
  this = {**earlier, "command": "python -m experiments.ablation --rows plain",
          "started": "2026-12-02 09:00"}
  (tmp_path / run.SESSIONS_FILE).write_text(json.dumps(this) + "\n")
  (tmp_path / run.COMMANDS_FILE).write_text(this["command"] + "\n")
  _write_run(tmp_path, _current(plain, 1, 0.6))
  first = report.build_document(str(tmp_path), "cmd", _document([_current(plain, 0, 0.5)],
                                                                [earlier]))
  second = report.build_document(str(tmp_path), "cmd", first)
  for document in (first, second):
    assert document["sessions"] == [earlier, this]
    assert document["command"] == f"{earlier['command']}\n    {this['command']}"
    assert len(document["runs"]) == 2


def test_report_renders_a_partial_table_and_says_how_complete_it_is(tmp_path):
  plain, region = table.CLUTTERED_ROWS[0], table.CLUTTERED_ROWS[2]
  curve = {"step": [100, 200, 300, 400, 500], "val_accuracy": [0.2, 0.4, 0.5, 0.6, 0.6]}
  for result in (_current(plain, 0, 0.5, curve=curve), _current(region, 0, 0.6, curve=curve,
                                                                test_pointing_game=0.9)):
    _write_run(tmp_path / "out", result)
  document = report.build_document(str(tmp_path / "out"), "cmd")
  # Panels drawn on another machine: region MLP's seed 0 is in the document, kept; region
  # conv has no run, left out.
  (tmp_path / "results").mkdir()
  for row in (region, table.CLUTTERED_ROWS[1]):
    (tmp_path / "results" / f"attention_{row.key}.png").write_bytes(b"drawn before")
  results_md = tmp_path / "RESULTS.md"
  report.write_report(document, out=str(tmp_path / "out"), results_md=str(results_md),
                      results_dir=str(tmp_path / "results"), data_dir=str(tmp_path / "no_data"))
  text = results_md.read_text()
  assert "nan" not in text
  assert "- cluttered (cluttered_digits/64): 2 of 95 runs (19 rows x 5 seeds)" in text
  assert "- heavy (cluttered_digits/64_heavy): 0 of 15 runs (5 rows x 3 seeds)" in text
  assert "- bags (digit_bags/16px): 0 of 54 runs (18 rows x 3 seeds)" in text
  assert "cifar10" not in text  # not part of the default command, no runs
  assert "| region MLP | SmallCNN | region | 60.0 ± 0.0 | 90.0 ± 0.0 |" in text
  assert "| plain CNN (residual) | residual SmallCNN | none | not run |" in text
  assert ("- region MLP vs plain CNN: +10.0 (one seed) points over 1 paired seeds; one "
          "seed so far, no interval.") in text
  assert "| cluttered_digits/64 | +10.0 (one seed) | - | - |" in text
  assert {"curves_cluttered.png", "cluttered_accuracy.png"} <= set(
      os.listdir(tmp_path / "results"))
  assert f"(results/attention_{region.key}.png)" in text
  assert f"attention_{table.CLUTTERED_ROWS[1].key}.png" not in text


def test_summarize_mean_and_sample_std_per_row_and_the_mean_curve():
  plain, region = table.CLUTTERED_ROWS[0], table.CLUTTERED_ROWS[2]
  curves = [{"step": [100, 200, 300, 400, 500], "val_accuracy": [0.2, 0.4, 0.5, 0.58, 0.6]},
            {"step": [100, 200, 300, 400, 500], "val_accuracy": [0.2, 0.4, 0.5, 0.6, 0.6]},
            {"step": [100, 200, 300, 400, 500], "val_accuracy": [0.2, 0.4, 0.5, 0.59, 0.6]}]
  results = [_result(plain, s, a, curve=c, converged=s == 1)
             for s, (a, c) in enumerate(zip([0.5, 0.6, 0.7], curves))]
  results += [_result(region, 0, 0.9, test_pointing_game=0.8)]
  summary = report.summarize(results, ["test_accuracy", "test_pointing_game"])
  assert summary[plain.key]["n"] == 3
  assert summary[plain.key]["test_accuracy"]["mean"] == pytest.approx(0.6)
  assert summary[plain.key]["test_accuracy"]["std"] == pytest.approx(
      np.sqrt(((0.5 - 0.6) ** 2 + (0.7 - 0.6) ** 2) / 2))
  assert "test_pointing_game" not in summary[plain.key]
  assert summary[plain.key]["test_accuracy"]["min"] == 0.5
  assert summary[plain.key]["test_accuracy"]["max"] == 0.7
  assert summary[region.key]["test_accuracy"] == {"mean": 0.9, "std": 0.0, "min": 0.9,
                                                  "max": 0.9}
  curve = summary[plain.key]["curve"]
  np.testing.assert_allclose(curve["mean"], [0.2, 0.4, 0.5, 0.59, 0.6])
  np.testing.assert_allclose(curve["std"][3], np.std([0.58, 0.6, 0.59], ddof=1))
  # The mean curve gains 0.6 - 0.59 = 1 point over its last fifth (from step 400).
  assert summary[plain.key]["val_gain_last_20pct"] == pytest.approx(0.01)
  assert summary[plain.key]["converged"] is False
  assert summary[plain.key]["converged_runs"] == 1
  assert summary[region.key]["converged"] is None and "curve" not in summary[region.key]
  lines = report.image_table(summary, [plain, region]).splitlines()
  assert lines[2].endswith("| **no** (+1.0; 1/3 runs) | 3 |")  # the rule's verdict
  assert lines[3].endswith("| - | 1 |")  # no curve: cannot tell


def test_compare_gives_paired_differences_with_t_intervals():
  rows = table.CLUTTERED_ROWS[:3]  # plain CNN, region conv, region MLP
  accuracy = {rows[0]: [0.50, 0.52, 0.48], rows[1]: [0.60, 0.63, 0.57],  # +10, +1 .. +1
              rows[2]: [0.55, 0.50, 0.49]}  # +5, -2, +1: the interval holds 0
  results = [_result(row, seed, value) for row, values in accuracy.items()
             for seed, value in enumerate(values)]
  summary = report.summarize(results, ["test_accuracy"])
  lines = report.compare(summary, results, report.baseline_pairs(rows), "test_accuracy")
  assert lines[0].startswith(f"- Best test accuracy: **{rows[1].label}**, 60.0")
  d = np.array([0.10, 0.11, 0.09])
  half = 4.302653 * d.std(ddof=1) / np.sqrt(3)  # t(0.975, 2 degrees of freedom)
  assert lines[1] == (f"- {rows[1].label} vs plain CNN: +10.0 [{100 * (0.1 - half):+.1f}, "
                      f"{100 * (0.1 + half):+.1f}] points over 3 paired seeds; a gain: the "
                      "interval excludes 0.")
  assert "no difference shown" in lines[2]
  one = [r for r in results if r["seed"] == 0 or r["row"] != rows[2].key]
  assert "one seed so far" in report.compare(summary, one, report.baseline_pairs(rows),
                                             "test_accuracy")[2]


def test_clutter_gaps_tabulate_paired_gain_over_the_plain_cnn_per_dataset():
  region = next(r for r in table.CLUTTERED_ROWS if r.label == "region MLP")
  results = [_result(table.CLUTTERED_ROWS[0], s, a) for s, a in enumerate([0.4, 0.5, 0.6])]
  results += [_result(region, s, a) for s, a in enumerate([0.55, 0.65, 0.75])]
  lines = report.clutter_gaps(results).splitlines()
  assert lines[0] == ("| gain over the plain CNN of the same backbone (points, 95 % CI) | "
                      "region MLP | multi-scale | CBAM (residual) |")
  assert lines[2] == "| cluttered_digits/64 | +15.0 [+15.0, +15.0] | - | - |"
  assert lines[3] == "| cluttered_digits/64_heavy | - | - | - |"


def test_localization_surprises_flag_accurate_models_that_point_elsewhere():
  rows = table.CLUTTERED_ROWS[5:7]
  summary = {rows[0].key: {"test_accuracy": {"mean": 0.9, "std": 0}, "test_pointing_game":
                           {"mean": 0.3, "std": 0}},
             rows[1].key: {"test_accuracy": {"mean": 0.9, "std": 0}, "test_pointing_game":
                           {"mean": 0.85, "std": 0}}}
  lines = report.localization_surprises(summary, rows)
  assert len(lines) == 1 and rows[0].name in lines[0]


@pytest.mark.slow
def test_bag_subset_has_the_requested_training_bags(tmp_path):
  import tensorflow_datasets as tfds
  data_dir = run.prepare_bag_subset(str(tmp_path), 20)
  assert run.prepare_bag_subset(str(tmp_path), 20) == data_dir  # built once
  train = tfds.data_source("digit_bags/16px", split="train", data_dir=data_dir,
                           download=False)
  assert len(train) == 20
  assert sum(int(train[i]["label"]) for i in range(20)) == 10  # balanced
  test = tfds.data_source("digit_bags/16px", split="test", data_dir=data_dir, download=False)
  assert len(test) == 1000


@pytest.mark.slow
def test_smoke_run_trains_measures_reports_and_resumes(tmp_path, capsys):
  rows = "cluttered_plain_cnn|cluttered_region_mlp|cluttered_residual_cbam|bags_attention"
  args = ["--smoke", "--rows", rows, "--out", str(tmp_path / "runs"),
          "--data_dir", str(tmp_path / "tfds"), "--workers", "2"]
  assert cli.main(args) == 0
  keys = ("cluttered_plain_cnn", "cluttered_region_mlp", "cluttered_residual_cbam",
          "bags_attention_pooling_n50")
  for key in keys:
    with open(tmp_path / "runs" / key / "seed_0" / "result.json") as f:
      result = json.load(f)
    assert result["steps"] == 1 and result["params"] > 0
    assert 0 <= result["test_accuracy"] <= 1
    assert result["curve"]["step"] == [1] and result["converged"] is None  # too short
  with open(tmp_path / "runs" / "bags_attention_pooling_n50" / "seed_0" / "result.json") as f:
    bags = json.load(f)
  assert 0 <= bags["test_auc"] <= 1 and 0 <= bags["instance_localization"] <= 1
  with open(tmp_path / "runs" / "cluttered_plain_cnn" / "seed_0" / "result.json") as f:
    assert json.load(f)["test_pointing_game"] is None  # no attention map
  report = (tmp_path / "runs" / "RESULTS.md").read_text()
  assert "| region MLP | SmallCNN | region |" in report
  assert ("| CBAM (residual) | residual SmallCNN, on the branch (published) | spatial |"
          in report)
  assert "| attention pooling | 50 |" in report
  assert "Wall clock of the training command: " in report
  assert "(4 of 4 planned runs, 2 workers" in report
  figures = os.listdir(tmp_path / "runs" / "results")
  assert "attention_cluttered_region_mlp.png" in figures
  assert {"curves_cluttered.png", "curves_bags.png"} <= set(figures)
  assert "attention_cluttered_plain_cnn.png" not in figures  # nothing to overlay
  capsys.readouterr()
  # A second call finds every run finished and trains nothing.
  assert cli.main(args) == 0
  assert "4 of 4 runs already finished; running 0" in capsys.readouterr().out
  # --remeasure measures the finished runs again from their checkpoints, keeps the rest.
  bag_result = tmp_path / "runs" / "bags_attention_pooling_n50" / "seed_0" / "result.json"
  bag_result.write_text(json.dumps({**bags, "instance_localization": -1.0, "test_auc": -1.0}))
  assert cli.main(args + ["--remeasure"]) == 0
  assert "measured 4 finished runs again" in capsys.readouterr().out
  assert json.loads(bag_result.read_text()) == bags


def test_pointing_ceiling_points_at_the_centre_of_the_region_holding_the_box_centre():
  # 64x64 image, 4x4 grid: 16-px regions with centres at 8, 24, 40, 56.
  boxes = np.array([[16, 16, 32, 32],    # exactly region (1, 1): its centre (24, 24) is in
                    [16, 16, 18, 18],    # a corner of region (1, 1): (24, 24) is outside
                    [0, 0, 64, 64],      # the whole image
                    [50, 2, 63, 14]])    # region (3, 0), centre (56, 8): inside
  assert measure.pointing_ceiling(boxes, (64, 64), (4, 4)) == 0.75
  assert measure.pointing_ceiling(boxes[1:2], (64, 64), (32, 32)) == 1.0  # fine grid


def test_report_renders_results_md_from_metrics_json(tmp_path):
  """The committed RESULTS.md is what `--report_only` renders from results/metrics.json.

  Without the datasets the pointing-game ceilings are left out; the attention panels are
  kept as drawn (their inputs live in the runs).
  """
  shutil.copytree(REPO / "results", tmp_path / "results")
  results_md = tmp_path / "RESULTS.md"
  assert cli.main(["--report_only", "--out", str(tmp_path / "no_runs"), "--data_dir",
                   str(tmp_path / "no_data"), "--results_md", str(results_md),
                   "--results_dir", str(tmp_path / "results")]) == 0
  expected = [line for line in (REPO / "RESULTS.md").read_text().splitlines()
              if not line.startswith("- Pointing-game ceiling")]
  assert results_md.read_text().splitlines() == expected
