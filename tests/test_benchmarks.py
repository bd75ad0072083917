"""The benchmark scripts run in their quick modes, so they cannot rot."""

import json
import subprocess
import sys

import pytest

from experiments import benchmark_region_op


def test_region_op_benchmark_quick(tmp_path):
  rows = benchmark_region_op.main(["--quick", "--json", str(tmp_path / "rows.json")])
  assert json.loads((tmp_path / "rows.json").read_text()) == json.loads(json.dumps(rows))
  (row,) = rows
  for key in ("sum_library_ms", "sum_reduce_ms", "sum_einsum_ms", "op_fwd_ms",
              "op_fwd_bwd_ms", "copy_GBps"):
    assert row[key] > 0, key


@pytest.mark.slow
def test_framework_benchmark_quick():
  pytest.importorskip("torch", reason="the framework benchmark compares against torch")
  out = subprocess.run([sys.executable, "experiments/benchmark.py", "--quick"],
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  for case in ("attention_net", "region_op"):
    assert case in out.stdout, out.stdout[-3000:]
