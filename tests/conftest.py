"""Session fixtures (one tfds data_dir with the tiny datasets, one tiny training config),
and in CI a hook that fails the run on skipped tests."""

import os

import pytest

from experiments.configs import tiny
from regionatt_jax import data
from tests import helpers


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """A tfds data_dir with `cluttered_digits/tiny`, its clean twin and `digit_bags/tiny`."""
  path = str(tmp_path_factory.mktemp("tfds"))
  data.prepare("cluttered_digits/tiny", path)
  data.prepare("cluttered_digits", path, config=helpers.TINY_DIGITS_CLEAN)
  data.prepare("digit_bags/tiny", path)
  return path


@pytest.fixture
def tiny_config(data_dir):
  """A fresh `experiments/configs/tiny.py` config reading from the session `data_dir`."""
  config = tiny.get_config()
  config.dataset.data_dir = data_dir
  return config


# --- CI: a skipped test fails the run ---------------------------------------------------
# In CI (environment variable CI set, as `.ci/run` does) every optional dependency is
# installed, so a skip can only mean something is missing, e.g. torch, which would turn
# the PyTorch parity tests green by skipping them. The session fails instead.

def _skips_fail_the_run() -> bool:
  return os.environ.get("CI", "").lower() not in ("", "0", "false")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
  del exitstatus, config
  skipped = terminalreporter.stats.get("skipped", [])
  if skipped and _skips_fail_the_run():
    terminalreporter.section("skipped tests fail the run in CI", red=True)
    for report in skipped:
      terminalreporter.line(f"{report.nodeid}: {report.longrepr}")


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
  reporter = session.config.pluginmanager.get_plugin("terminalreporter")
  skipped = reporter.stats.get("skipped", []) if reporter is not None else []
  if skipped and _skips_fail_the_run() and exitstatus == pytest.ExitCode.OK:
    session.exitstatus = pytest.ExitCode.TESTS_FAILED

# --- end of the CI block ---------------------------------------------------------------
