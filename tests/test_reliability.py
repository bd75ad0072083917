"""Reliability of training runs, tested by killing them: exact resume, atomic checkpoints,
damaged checkpoints, non-finite values, determinism and early config errors.

The runs are real: `python -m experiments.train` on `experiments/configs/tiny.py`
(a tiny `RegionAttentionClassifier` on `cluttered_digits/tiny`) in a subprocess,
SIGKILLed at random steps and during a checkpoint save, then restarted on the same
workdir. What must hold is compared against an uninterrupted run: the whole final train
state (params, batch stats, optimizer state, RNG, step) bitwise, and every logged metric
except wall-clock timings exactly. Damaged checkpoints and NaN/Inf batches are tested
in-process on copies of that run's workdir, with the same config.
"""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from regionatt_jax import data
from regionatt_jax.train import loop
from regionatt_jax.train import metrics as metrics_lib
from experiments.configs import tiny
from tests import helpers
from tests.helpers import snapshot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "experiments", "configs", "tiny.py")
STEPS = 40  # checkpoints every 2 steps (experiments/configs/tiny.py)
TIMING_KEYS = ("step_time_s", "images_per_sec")
RUN_TIMEOUT_S = 600
TMP_SUFFIX = ".orbax-checkpoint-tmp"  # orbax writes a step here, then renames it


def train_command(workdir: str, data_dir: str, *overrides: str) -> list[str]:
  return [sys.executable, "-m", "experiments.train", f"--config={CONFIG}",
          f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}",
          f"--config.train.steps={STEPS}", *overrides]


def start(workdir: str, data_dir: str, *overrides: str) -> subprocess.Popen:
  """Starts a run in the background; its output goes to `<workdir>.log`."""
  with open(f"{workdir}.log", "a") as log:  # the child keeps its own descriptor
    return subprocess.Popen(train_command(workdir, data_dir, *overrides), cwd=REPO,
                            stdout=log, stderr=subprocess.STDOUT, text=True)


def finish(process: subprocess.Popen, workdir: str) -> dict:
  """Waits for a run to end; returns its summary."""
  process.wait(timeout=RUN_TIMEOUT_S)
  with open(f"{workdir}.log") as f:
    log = f.read()
  assert process.returncode == 0, log[-3000:]
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)


def run(workdir: str, data_dir: str, *overrides: str) -> dict:
  return finish(start(workdir, data_dir, *overrides), workdir)


def last_logged_step(workdir: str) -> int:
  """The last train step in metrics.jsonl; a line cut off by a kill is ignored."""
  step = 0
  try:
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue
        if record["split"] == "train":
          step = record["step"]
  except FileNotFoundError:
    pass
  return step


def checkpoint_entries(workdir: str) -> list[str]:
  try:
    return os.listdir(os.path.join(workdir, "checkpoints"))
  except FileNotFoundError:
    return []


def complete_steps(workdir: str) -> list[int]:
  return sorted(int(name) for name in checkpoint_entries(workdir) if name.isdigit())


def kill_when(process: subprocess.Popen, condition, timeout: float = RUN_TIMEOUT_S) -> bool:
  """SIGKILLs `process` as soon as `condition()` holds; False if it ended first."""
  deadline = time.time() + timeout
  while process.poll() is None and time.time() < deadline:
    if condition():
      process.send_signal(signal.SIGKILL)
      process.wait()
      return True
    time.sleep(0.001)
  assert process.poll() is not None, "the run neither ended nor reached the kill point"
  return False


def unfinished_saves(workdir: str) -> list[int]:
  """Steps whose temporary directory exists: being written, or left by a kill."""
  return sorted(int(name[:-len(TMP_SUFFIX)]) for name in checkpoint_entries(workdir)
                if name.endswith(TMP_SUFFIX))


def checkpoint_state(workdir: str, step: int = STEPS) -> dict[str, np.ndarray]:
  return helpers.checkpoint_state(workdir, step)


def logged_metrics(workdir: str) -> list[dict]:
  """metrics.jsonl without wall-clock timings (which differ between any two runs)."""
  return [{k: v for k, v in record.items() if k not in TIMING_KEYS}
          for record in metrics_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))]


def assert_same_run(workdir: str, reference: str, rtol: float = 0.0):
  """Equal final state and logged metrics: bitwise, or within `rtol`.

  Runs inside the pytest process compare with `rtol=1e-5`: once, in a `pytest -n 2` run
  after other training tests, in-process runs differed from the CLI reference by one
  float32 ulp in the Adam moments (see RELIABILITY.md, known gaps).
  """
  got, expected = checkpoint_state(workdir), checkpoint_state(reference)
  assert sorted(got) == sorted(expected)
  for name in expected:
    np.testing.assert_allclose(got[name], expected[name], rtol=rtol, atol=0, err_msg=name)
  got, expected = logged_metrics(workdir), logged_metrics(reference)
  assert [(r["step"], r["split"], sorted(r)) for r in got] == [
      (r["step"], r["split"], sorted(r)) for r in expected]
  for record, wanted in zip(got, expected):
    numbers = [k for k in wanted if k != "split"]
    np.testing.assert_allclose([record[k] for k in numbers], [wanted[k] for k in numbers],
                               rtol=rtol, atol=0, err_msg=str((record, wanted)))


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory, data_dir):
  """An uninterrupted run: its workdir."""
  workdir = str(tmp_path_factory.mktemp("reference") / "run")
  summary = run(workdir, data_dir)
  assert summary["resumed_from"] is None and summary["steps"] == STEPS
  return workdir


@pytest.mark.slow
def test_killed_at_random_steps_and_during_a_save_resumes_exactly(
    tmp_path, data_dir, reference_run):
  """SIGKILL at 3 random steps and once while a checkpoint is being written; each
  restart resumes from the last complete checkpoint; the end equals an uninterrupted run."""
  workdir = str(tmp_path / "run")
  kill_steps = sorted(random.Random(os.environ.get("REGIONATT_KILL_SEED", "0")).sample(
      range(3, STEPS - 8), 3))
  kills, reached = [], 0
  for kill_step in kill_steps:
    resumable = max(complete_steps(workdir), default=0)
    # Past every step logged so far: records left by the previous run cannot trigger it.
    target = max(kill_step, reached + 1)
    process = start(workdir, data_dir)
    assert kill_when(process, lambda: last_logged_step(workdir) >= target), (
        f"the run ended before step {target}")
    killed_at = last_logged_step(workdir)
    assert killed_at > resumable  # it resumed and made progress before the kill
    # A save of a step no earlier run reached was under way (not a leftover).
    kills.append((killed_at, any(s > reached for s in unfinished_saves(workdir))))
    reached = killed_at

  # Kill while orbax writes a step no earlier run reached (so its temporary directory
  # is new, not one left by an earlier kill): the rename has not happened, so that step
  # must not be restored.
  first_save = max(last_logged_step(workdir), *complete_steps(workdir)) // 2 * 2 + 2
  process = start(workdir, data_dir)
  assert kill_when(process, lambda: any(s >= first_save for s in unfinished_saves(workdir)))
  # The kill landed inside that save: its temporary directory outlived the process, and
  # the step never became a complete checkpoint (the save had not been renamed yet, and
  # no later one was started).
  partial = max(unfinished_saves(workdir), default=None)
  assert partial is not None and partial >= first_save, (
      f"no unfinished save of step {first_save} or later after the kill: the save "
      f"finished before SIGKILL landed ({checkpoint_entries(workdir)})")
  assert partial not in complete_steps(workdir), (partial, checkpoint_entries(workdir))
  last_complete = max(complete_steps(workdir))
  assert last_complete < partial

  summary = run(workdir, data_dir)
  assert summary["resumed_from"] == last_complete, (summary, last_complete, partial)
  assert_same_run(workdir, reference_run)
  in_save = sum(saving for _, saving in kills) + 1
  print(f"\nkills survived: {len(kills) + 1}, {in_save} of them while a checkpoint was "
        f"being written (at logged steps {[step for step, _ in kills]}, and during the save "
        f"of step {partial}, resumed from {last_complete})")


@pytest.mark.slow
def test_same_seed_is_bitwise_identical_and_another_seed_differs(
    tmp_path, data_dir, reference_run):
  again = str(tmp_path / "again")
  run(again, data_dir)
  assert_same_run(again, reference_run)

  other = str(tmp_path / "seed1")
  run(other, data_dir, "--config.seed=1")
  losses = lambda workdir: [r["loss"] for r in logged_metrics(workdir) if r["split"] == "train"]
  assert len(losses(other)) == len(losses(reference_run)) == STEPS
  assert all(a != b for a, b in zip(losses(other), losses(reference_run)))
  params = checkpoint_state(other)
  reference = checkpoint_state(reference_run)
  assert not np.array_equal(params["params/classifier/kernel"],
                            reference["params/classifier/kernel"])


@pytest.mark.parametrize("override, names", [
    ("--config.train.stpes=3", "unknown config key 'stpes' Did you mean"),
    ("--config.train.steps=-5", "'train.steps'"),
    ("--config.train.steps=many", "config.train.steps"),
])
def test_cli_rejects_a_bad_config_before_any_work(tmp_path, override, names):
  """Unknown keys, impossible values and wrong types fail in the CLI, naming the key,
  before the workdir is created."""
  workdir = str(tmp_path / "run")
  result = subprocess.run(train_command(workdir, str(tmp_path / "no_data"), override),
                          cwd=REPO, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
  assert result.returncode != 0
  assert names in result.stdout + result.stderr, (result.stdout + result.stderr)[-2000:]
  if "stpes" in override:  # a flag error, reported as absl reports bad flags
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
  assert not os.path.exists(workdir)
  assert not os.path.exists(tmp_path / "no_data")  # no dataset was built either


def test_grid_larger_than_the_feature_map_fails_before_any_work(tmp_path):
  """An impossible model option fails while the model is traced, before data or workdir."""
  config = tiny.get_config()
  config.dataset.data_dir = str(tmp_path / "no_data")
  config.model.kwargs.head_kwargs = {"grid": (64, 64)}
  workdir = str(tmp_path / "run")
  with pytest.raises(ValueError, match=r"grid \(64, 64\) is larger than the image"):
    loop.train_and_evaluate(config, workdir)
  assert not os.path.exists(workdir) and not os.path.exists(config.dataset.data_dir)


# --- damaged checkpoints (in-process runs on copies of the reference workdir) ---------

def in_process_config(data_dir: str, **train):
  """The config the CLI runs build from experiments/configs/tiny.py, for in-process runs."""
  config = tiny.get_config()
  config.dataset.data_dir = data_dir
  config.train.steps = STEPS
  for key, value in train.items():
    config.train[key] = value
  return config


def truncate_arrays(step_dir: str) -> None:
  """Cuts every array data file of the train state to 10 bytes (a torn write)."""
  for root, _, names in os.walk(os.path.join(step_dir, "state")):
    if os.path.basename(root) == "d":
      for name in names:
        os.truncate(os.path.join(root, name), 10)


def delete_state_metadata(step_dir: str) -> None:
  os.remove(os.path.join(step_dir, "state", "_METADATA"))


def garble_iterator_state(step_dir: str) -> None:
  directory = os.path.join(step_dir, "data_iterator")
  for name in os.listdir(directory):
    if name.endswith(".json"):
      with open(os.path.join(directory, name), "w") as f:
        f.write('{"next_ind')


DAMAGES = {"truncated_arrays": truncate_arrays, "no_state_metadata": delete_state_metadata,
           "garbled_iterator_state": garble_iterator_state}


@pytest.mark.slow
@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(
    tmp_path, data_dir, reference_run, damage, caplog):
  """The final checkpoint of a finished run is damaged; a restart reports it, restores
  the previous one, retrains the last steps and ends bitwise equal to the reference.
  The damaged checkpoint is moved to workdir/damaged_checkpoints, byte for byte."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference_run, workdir)
  steps = complete_steps(workdir)
  damaged_dir = os.path.join(workdir, "checkpoints", str(steps[-1]))
  DAMAGES[damage](damaged_dir)
  damaged_files = snapshot(damaged_dir)

  with caplog.at_level("WARNING"):
    summary = loop.train_and_evaluate(in_process_config(data_dir), workdir)
  assert summary["resumed_from"] == steps[-2]
  report = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
  assert f"checkpoint {steps[-1]}" in report and "damaged" in report, report
  assert_same_run(workdir, reference_run, rtol=1e-5)
  aside = os.path.join(workdir, "damaged_checkpoints", str(steps[-1]))
  assert snapshot(aside) == damaged_files


@pytest.mark.slow
def test_every_checkpoint_damaged_stops_with_advice_and_changes_nothing(
    tmp_path, data_dir, reference_run):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference_run, workdir)
  for step in complete_steps(workdir):
    truncate_arrays(os.path.join(workdir, "checkpoints", str(step)))
  before = snapshot(workdir)
  with pytest.raises(ValueError, match="No checkpoint in .* could be read") as error:
    loop.train_and_evaluate(in_process_config(data_dir), workdir)
  message = str(error.value)
  assert all(str(step) in message for step in complete_steps(workdir)), message
  assert "--workdir" in message  # says what to do
  assert snapshot(workdir) == before


@pytest.mark.slow
def test_metrics_line_cut_by_a_kill_is_dropped_on_resume(tmp_path, data_dir, reference_run):
  """A kill in the middle of writing metrics.jsonl leaves half a line; the restart drops
  it with the other records past its checkpoint and the log reads as one run."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference_run, workdir)
  shutil.rmtree(os.path.join(workdir, "checkpoints", str(STEPS)))
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    lines = f.readlines()
  cut = next(i for i, line in enumerate(lines) if json.loads(line)["step"] == STEPS)
  with open(path, "w") as f:
    f.writelines(lines[:cut])
    f.write(lines[cut][:25])
  loop.train_and_evaluate(in_process_config(data_dir), workdir)
  assert_same_run(workdir, reference_run, rtol=1e-5)


# --- non-finite loss or gradient (injected into one batch) ----------------------------

def poison_batch(monkeypatch, at_step: int, value: float):
  """Makes the training batch of step `at_step` (1-based) carry `value` in one pixel."""

  def poison(count, batch):
    batch = dict(batch)
    if count == at_step:
      image = np.array(batch["image"])
      image.flat[0] = value
      batch["image"] = image
    return batch

  helpers.wrap_train_batches(monkeypatch, poison)


def all_finite(state: dict[str, np.ndarray]) -> bool:
  return all(np.isfinite(v).all() for k, v in state.items() if v.dtype.kind == "f")


@pytest.mark.slow
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_nonfinite_step_stops_naming_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, data_dir, monkeypatch, value):
  workdir = str(tmp_path / "run")
  poison_batch(monkeypatch, at_step=7, value=value)
  config = in_process_config(data_dir, steps=12, nonfinite="stop")
  with pytest.raises(FloatingPointError, match=r"step 7\b") as error:
    loop.train_and_evaluate(config, workdir)
  assert "train.nonfinite" in str(error.value)  # says how to skip instead
  assert complete_steps(workdir) == [4, 6]
  assert not unfinished_saves(workdir)
  assert all_finite(checkpoint_state(workdir, 6))
  assert last_logged_step(workdir) == 6  # nothing logged for the bad step


@pytest.mark.slow
def test_nonfinite_step_is_skipped_and_counted(tmp_path, data_dir, monkeypatch):
  workdir = str(tmp_path / "run")
  poison_batch(monkeypatch, at_step=7, value=np.nan)
  config = in_process_config(data_dir, steps=10, nonfinite="skip", checkpoint_every=1,
                             keep_checkpoints=10)
  summary = loop.train_and_evaluate(config, workdir)
  assert summary["nonfinite_steps"] == 1
  records = {r["step"]: r for r in logged_metrics(workdir) if r["split"] == "train"}
  assert [step for step, r in records.items() if r["nonfinite"]] == [7]
  before, after = checkpoint_state(workdir, 6), checkpoint_state(workdir, 7)
  for name in before:  # the update of step 7 was not applied
    if not name.startswith("step"):
      np.testing.assert_array_equal(after[name], before[name], err_msg=name)
  assert int(after["step"]) == 7
  final = checkpoint_state(workdir, 10)
  assert all_finite(final)
  assert not np.array_equal(final["params/classifier/kernel"],
                            before["params/classifier/kernel"])  # training went on
