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
def test_framework_benchmark_quick(tmp_path):
  pytest.importorskip("torch", reason="the framework benchmark compares against torch")
  out = subprocess.run([sys.executable, "experiments/benchmark.py", "--quick",
                        "--out-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=900)
  assert out.returncode == 0, out.stderr[-3000:]
  for case in ("attention_net", "region_op"):
    assert case in out.stdout, out.stdout[-3000:]
  assert "JAX compile <= 1 s per function, from the persistent cache" in out.stdout
  rows = json.loads((tmp_path / "results.json").read_text())["rows"]
  jax_rows = [r for r in rows if r["framework"] == "jax"]
  assert jax_rows and all(r["median_ms"] > 0 for r in rows)
  # The second compile loads the first one's executable from the persistent cache.
  train_steps = [r for r in jax_rows if r["kind"] == "train_step"]
  assert train_steps and all(r["compile_cached_s"] < r["compile_s"] for r in train_steps)
