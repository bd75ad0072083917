"""The benchmark scripts run in their quick modes, so they cannot rot, and BENCHMARKS.md
is what they render from their recorded results."""

import json
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import benchmark
from experiments import benchmark_conv
from experiments import benchmark_region_op
from experiments import hlo_profile
from experiments import timing

REPO = pathlib.Path(__file__).resolve().parent.parent


def test_median_ms_is_the_median_of_the_timed_calls(monkeypatch):
  clock = [0.0]
  durations = iter([5.0, 1.0, 3.0, 2.0])  # seconds each call takes on a fake clock
  monkeypatch.setattr(timing.time, "perf_counter", lambda: clock[0])

  def call():
    clock[0] += next(durations)

  result = timing.median_ms(call, warmup=1, iters=3)
  assert next(durations, None) is None  # one warm-up call (5 s, untimed), three timed
  assert result["median_ms"] == pytest.approx(2000.0)  # median of 1, 3, 2 s
  assert (result["p25_ms"], result["p75_ms"]) == pytest.approx((1500.0, 2500.0))


def test_rounds_interleave_frameworks_and_keep_the_median_round(monkeypatch):
  calls, times = [], iter([5.0, 1.0, 9.0, 2.0, 7.0, 3.0])  # jax, torch, torch, jax, jax, torch

  def fake_worker(module, spec, allocator, threads, timeout_s):
    calls.append(spec["framework"])
    return dict(rows=[dict(framework=spec["framework"], case="op", batch=8, kind="forward",
                           median_ms=next(times))],
                threads=threads, peak_rss_mb=100.0 + len(calls), rss_after_import_mb=50.0)

  monkeypatch.setattr(timing, "run_worker", fake_worker)
  results = timing.run_suite("m", "s", [("jax", "op"), ("torch", "op")], {}, ["tuned"], 1,
                             60.0, rounds=3)
  assert calls == ["jax", "torch", "torch", "jax", "jax", "torch"]
  by_framework = {r["framework"]: r for r in results["rows"]}
  assert len(results["rows"]) == 2
  assert by_framework["jax"]["median_ms"] == 5.0  # of 5, 2, 7
  assert by_framework["torch"]["median_ms"] == 3.0  # of 1, 9, 3
  assert sorted(by_framework["torch"]["round_medians_ms"]) == [1.0, 3.0, 9.0]
  assert {m["framework"]: m["peak_rss_mb"] for m in results["memory"]} == {"jax": 105.0,
                                                                           "torch": 106.0}


@pytest.mark.parametrize("script,marker", [
    (benchmark, ""), (benchmark, "_default_allocator"), (benchmark_conv, "_conv")])
def test_benchmarks_md_sections_render_from_their_results(script, marker):
  results = json.loads((REPO / "benchmarks" / f"results{marker}.json").read_text())
  text = (REPO / "BENCHMARKS.md").read_text()
  begin = timing.RESULTS_BEGIN.replace(":", f"{marker}:")
  end = timing.RESULTS_END.replace(":", f"{marker}:")
  assert text.split(begin, 1)[1].split(end, 1)[0] == "\n" + script.markdown(results)


def test_region_op_benchmark_quick(tmp_path):
  rows = benchmark_region_op.main(["--quick", "--json", str(tmp_path / "rows.json")])
  assert json.loads((tmp_path / "rows.json").read_text()) == json.loads(json.dumps(rows))
  (row,) = rows
  for key in ("sum_library_ms", "sum_reduce_ms", "sum_einsum_ms", "op_pooled_fwd_ms",
              "op_pooled_fwd_bwd_ms", "op_regions_fwd_ms", "op_regions_fwd_bwd_ms",
              "pass_ms", "copy_GBps"):
    assert row[key] > 0, key


def test_region_op_scaling_quick():
  rows = benchmark_region_op.main(["--quick", "--scaling"])
  # 16 px on 2x2 and 4x4 grids, each also as windows of stride half the region.
  assert [(r["layout"], r["regions"]) for r in rows] == [
      ("grid", 4), ("windows", 9), ("grid", 16), ("windows", 49)]
  assert all(r["fwd_passes"] > 0 and r["fwd_bwd_ns"] > 0 for r in rows)


def test_hlo_bytes_of_arrays_tuples_and_entry_instructions():
  assert hlo_profile.type_bytes("f32[2,3]{1,0}") == 24
  assert hlo_profile.type_bytes("(f32[], bf16[4,5]{1,0}, pred[7])") == 4 + 40 + 7
  text = """HloModule m

ENTRY %main (p: f32[8,4], q: f32[4]) -> f32[8] {
  %p = f32[8,4]{1,0} parameter(0)
  %q = f32[4]{0} parameter(1)
  %b = f32[32]{0} bitcast(%p)
  %fusion = f32[8]{0} fusion(%p, %q), kind=kLoop, calls=%fused
  ROOT %dot.1 = (f32[8]{0}, s32[2]{0}) dot(%fusion, %b), lhs_contracting_dims={0}
}
"""
  assert hlo_profile.entry_instructions(text) == {
      "fusion": {"opcode": "fusion", "kind": "kLoop", "out_bytes": 32, "in_bytes": 128 + 16},
      "dot.1": {"opcode": "dot", "kind": "dot", "out_bytes": 40, "in_bytes": 32 + 128}}


def test_hlo_profile_times_the_instructions_that_ran():
  x = jnp.ones((256, 256), jnp.float32)
  rows = hlo_profile.profile(jax.jit(lambda x: jnp.sin(x) * 2), x, calls=3)
  # One elementwise fusion reads and writes x once, three times.
  assert [(r["kind"], r["in_bytes"], r["out_bytes"], r["runs"]) for r in rows] == [
      ("kLoop", x.nbytes, x.nbytes, 3)]
  assert rows[0]["ms"] > 0
  lines = hlo_profile.format_profile(rows, total_ms=2 * rows[0]["ms"], pass_ms=rows[0]["ms"])
  assert "50.0%" in lines[1] and "1.00" in lines[1]


def test_region_op_profile_quick():
  (row,) = benchmark_region_op.main(["--quick", "--profile", "--repeats", "2"])
  x_bytes = 4 * np.prod(row["shape"])
  assert row["fwd_bwd_ms"] > 0 and row["pass_ms"] > 0
  # Forward+backward reads x (pooling, weighted sum, weights' gradient) and writes dx.
  assert any(r["in_bytes"] >= x_bytes for r in row["instructions"])
  assert any(r["out_bytes"] == x_bytes for r in row["instructions"])


def _run_quick(module: str, out_dir) -> str:
  """Runs `python -m <module> --quick`; returns its stdout."""
  pytest.importorskip("torch", reason="the benchmarks compare against torch")
  out = subprocess.run([sys.executable, "-m", module, "--quick", "--out-dir", str(out_dir)],
                       capture_output=True, text=True, timeout=900, cwd=REPO)
  assert out.returncode == 0, out.stderr[-3000:]
  return out.stdout


@pytest.mark.slow
def test_framework_benchmark_quick(tmp_path):
  stdout = _run_quick("experiments.benchmark", tmp_path)
  for case in ("attention_net", "region_op"):
    assert case in stdout, stdout[-3000:]
  assert "JAX compile <= 1 s per function, from the persistent cache" in stdout
  rows = json.loads((tmp_path / "results.json").read_text())["rows"]
  jax_rows = [r for r in rows if r["framework"] == "jax"]
  assert jax_rows and all(r["median_ms"] > 0 for r in rows)
  # The second compile loads the first one's executable from the persistent cache.
  train_steps = [r for r in jax_rows if r["kind"] == "train_step"]
  assert train_steps and all(r["compile_cached_s"] < r["compile_s"] for r in train_steps)


@pytest.mark.slow
def test_conv_benchmark_quick(tmp_path):
  _run_quick("experiments.benchmark_conv", tmp_path)
  results = json.loads((tmp_path / "results_conv.json").read_text())
  forms = {(r["framework"], r["kind"]) for r in results["rows"]}
  assert ("jax", "fwd+dx+dw: Conv f32") in forms
  assert ("torch_eager", "fwd+dx+dw: channels_last") in forms
  assert all(r["median_ms"] > 0 for r in results["rows"])
  assert {m["framework"] for m in results["memory"]} == {"jax", "torch_eager"}
