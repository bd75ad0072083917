"""pytest configuration shared by the test modules."""

import os

import pytest


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
