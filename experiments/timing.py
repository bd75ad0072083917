r"""What the benchmark scripts share: a median timer, the allocator setting, the
environment record, and the protocol of one subprocess per measured (framework, case).

The tuned allocator: glibc's default malloc returns every buffer above its dynamic mmap
threshold (up to 32 MB) to the OS after use, so each training step page-faults its
activations back in; raising both thresholds keeps them (docs/design.md, "Allocator",
has the measured effect). Print it for a shell with `python -m experiments.timing`.

JAX and torch are imported inside the functions that need them: a worker measures one
framework's memory, so it must not load the other.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
# arena_max=1: XLA's worker threads each get a malloc arena of their own, whose heap
# glibc shrinks whatever trim_threshold says, so every call page-faulted a fresh gradient
# buffer back in (region op fwd+bwd on 128 MiB: 32,769 minor faults per call; 0 with it).
TUNED_ALLOCATOR = ("glibc.malloc.mmap_threshold=4294967296:"
                   "glibc.malloc.trim_threshold=4294967296:glibc.malloc.arena_max=1")
#: `--allocators` choices -> the GLIBC_TUNABLES value (None: glibc's default).
ALLOCATORS = {"tuned": TUNED_ALLOCATOR, "default": None}
RESULTS_BEGIN, RESULTS_END = "<!-- benchmark results: begin -->", "<!-- benchmark results: end -->"


def median_ms(fn: Callable[[], object], warmup: int, iters: int) -> dict[str, float]:
  """Times `fn()` `iters` times after `warmup` calls; `fn` must block until done.

  Returns:
    `median_ms`, `p25_ms`, `p75_ms`, `runs` and `page_faults_per_run` (minor faults of
    this process per timed call).
  """
  for _ in range(warmup):
    fn()
  faults_before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults_before
  times_ms = np.array(times) * 1e3
  return dict(median_ms=float(np.median(times_ms)), p25_ms=float(np.percentile(times_ms, 25)),
              p75_ms=float(np.percentile(times_ms, 75)), runs=iters,
              page_faults_per_run=faults / iters)


def peak_rss_mb() -> float:
  """The high-water mark of this process's resident memory, MiB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def jax_timed_compile(fn, *args, donate: Sequence[int] = ()):
  """Compiles `fn` cold, then again as a fresh `jit` (what a second run of a script sees).

  With JAX's persistent compilation cache on (`enable_compilation_cache`), the cold
  compile writes the executable there and the second one loads it.

  Returns:
    The executable and a dict: `compile_s` (cold: trace + lower + XLA compile), its part
    `lower_s`, `compile_cached_s`, the executable's temporaries `temp_mb`, and the
    process's peak RSS once compiled (before it has run).
  """
  import jax  # pylint: disable=g-import-not-at-top  (a torch worker must not load JAX)
  times, lower_times = [], []
  for _ in range(2):
    jax.clear_caches()  # JAX also keeps compiled executables in memory; only disk may help
    start = time.perf_counter()
    lowered = jax.jit(fn, donate_argnums=tuple(donate)).lower(*args)
    lower_times.append(time.perf_counter() - start)
    compiled = lowered.compile()
    times.append(time.perf_counter() - start)
  analysis = compiled.memory_analysis()
  return compiled, dict(
      compile_s=times[0], compile_cached_s=times[1], lower_s=lower_times[0],
      temp_mb=analysis.temp_size_in_bytes / 2**20 if analysis else None,
      peak_rss_after_compile_mb=peak_rss_mb())


def enable_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache in `directory`, for every executable."""
  import jax  # pylint: disable=g-import-not-at-top  (a torch worker must not load JAX)
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def cpu_name() -> str:
  """The CPU model from /proc/cpuinfo (`platform.processor()` elsewhere)."""
  cpuinfo = Path("/proc/cpuinfo")
  lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
  return next((line.split(":", 1)[1].strip() for line in lines
               if line.startswith("model name")), platform.processor() or "unknown")


def environment(versions: dict[str, str | None]) -> dict[str, Any]:
  """`{"versions": {"python", **versions}, "cpu", "cores", "platform"}`."""
  return dict(versions={"python": platform.python_version(), **versions}, cpu=cpu_name(),
              cores=os.cpu_count(), platform=platform.platform())


def framework_environment(threads: int, allocators: Sequence[str]) -> dict[str, Any]:
  """`environment` with JAX's and torch's versions, JAX's devices and the run's settings."""
  import flax  # pylint: disable=g-import-not-at-top  (a torch worker must not load JAX)
  import jax  # pylint: disable=g-import-not-at-top
  import jaxlib  # pylint: disable=g-import-not-at-top
  try:  # In a subprocess: this parent process stays free of torch.
    torch = subprocess.run([sys.executable, "-c", "import torch; print(torch.__version__)"],
                           capture_output=True, text=True, check=True).stdout.strip()
  except subprocess.CalledProcessError:
    torch = None
  return dict(**environment({"jax": jax.__version__, "jaxlib": jaxlib.__version__,
                             "flax": flax.__version__, "torch": torch}),
              threads=threads, devices=[str(d) for d in jax.devices()],
              allocators=list(allocators), tuned_allocator=TUNED_ALLOCATOR)


def allocator_env(allocator: str | None, **extra: str) -> dict[str, str]:
  """This process's environment with `GLIBC_TUNABLES=allocator` (unset for None)."""
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  if allocator:
    env["GLIBC_TUNABLES"] = allocator
  return {**env, **extra}


def run_worker(module: str, spec: dict, allocator: str | None, threads: int,
               timeout_s: float) -> dict:
  """Runs `python -m <module> --worker <spec as JSON>`; returns its last stdout line's JSON.

  Raises:
    RuntimeError: the worker failed (with the end of its stderr).
  """
  env = allocator_env(allocator, OMP_NUM_THREADS=str(threads),
                      PYTHONPATH=f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  done = subprocess.run([sys.executable, "-m", module, "--worker", json.dumps(spec)],
                        env=env, cwd=REPO, capture_output=True, text=True,
                        timeout=timeout_s, check=False)
  if done.returncode:
    raise RuntimeError(f"worker {spec} failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def worker_result(framework: str, threads: int, measure: Callable[[], list[dict]]) -> dict:
  """Runs `measure()` in a worker process set up for `framework`; what the parent reads.

  Imports the framework first (its import cost counted apart, as `rss_after_import_mb`),
  sets torch's thread count, and gives JAX a fresh persistent compilation cache (so
  `jax_timed_compile` measures cold and cached compiles).

  Returns:
    `{"rows": measure(), "threads", "rss_after_import_mb", "peak_rss_mb"}`.
  """
  # pylint: disable=g-import-not-at-top  (a worker loads one framework only)
  if framework.startswith("jax"):
    import regionatt_jax.nn  # noqa: F401
    cache = tempfile.mkdtemp(prefix="jax_cache_")
    atexit.register(shutil.rmtree, cache, True)
    enable_compilation_cache(cache)
    used_threads = os.cpu_count()  # XLA:CPU's intra-op pool: one thread per core
  else:
    import torch
    import regionatt_jax.pytorch  # noqa: F401
    torch.set_num_threads(threads)
    used_threads = torch.get_num_threads()
  rss_after_import = peak_rss_mb()
  rows = measure()
  return dict(rows=rows, threads=used_threads, rss_after_import_mb=rss_after_import,
              peak_rss_mb=peak_rss_mb())


#: What names a measurement: rows of different rounds with these equal are one row.
ROW_IDENTITY = ("allocator", "framework", "case", "batch", "kind", "form")


def median_of_rounds(rows: Sequence[dict]) -> list[dict]:
  """One row per measurement (`ROW_IDENTITY`): the round whose median is the median of
  the rounds' medians, with every round's median in `round_medians_ms`."""
  groups = {}
  for row in rows:
    groups.setdefault(tuple(row.get(k) for k in ROW_IDENTITY), []).append(row)
  merged = []
  for group in groups.values():
    ordered = sorted(group, key=lambda r: r["median_ms"])
    merged.append(dict(ordered[(len(ordered) - 1) // 2],
                       round_medians_ms=[r["median_ms"] for r in group]))
  return merged


def run_suite(module: str, suite: str, plan: Sequence[tuple[str, str]], size: dict,
              allocators: Sequence[str], threads: int, timeout_s: float,
              rounds: int = 1) -> dict:
  """Runs `module`'s worker for every (allocator, (framework, case) of `plan`), `rounds`
  times.

  The rounds interleave the frameworks (each round runs the whole plan, every other
  round in reverse order), so that noise of a shared machine hits them alike; each
  measurement is then the median round (`median_of_rounds`).

  Returns:
    The results document: `environment` (`framework_environment`), `size`, `suite`, `command`,
    `started`, `rounds`, `rows` (each with its allocator), `memory` (peak RSS per worker,
    the largest over rounds) and the `load_average` before and after.
  """
  load_before = os.getloadavg()
  results = dict(environment=framework_environment(threads, allocators), size=size, suite=suite,
                 command=" ".join([Path(sys.executable).name, *sys.argv]),
                 started=time.strftime("%Y-%m-%d %H:%M:%S %Z"), rounds=rounds, rows=[],
                 memory=[])
  memory = {}
  for round_index in range(rounds):
    for allocator in allocators:
      for framework, case in plan[::-1] if round_index % 2 else plan:
        spec = dict(framework=framework, case=case, size=size, threads=threads)
        print(f"[round {round_index + 1}/{rounds}, {allocator}] {framework} / {case} ...",
              file=sys.stderr, flush=True)
        out = run_worker(module, spec, ALLOCATORS[allocator], threads, timeout_s)
        results["rows"] += [dict(allocator=allocator, **row) for row in out["rows"]]
        entry = dict(allocator=allocator, framework=framework, case=case,
                     threads=out["threads"], peak_rss_mb=out["peak_rss_mb"],
                     rss_after_import_mb=out["rss_after_import_mb"])
        key = (allocator, framework, case)
        if key not in memory or entry["peak_rss_mb"] > memory[key]["peak_rss_mb"]:
          memory[key] = entry
  results["rows"] = median_of_rounds(results["rows"])
  results["memory"] = list(memory.values())
  results["load_average"] = dict(before=load_before, after=os.getloadavg())
  return results


def _memory_table(results: dict) -> list[str]:
  lines = ["| allocator | case | framework | peak RSS MB | RSS after imports MB |",
           "|---|---|---|---|---|"]
  for m in results["memory"]:
    lines.append(f"| {m['allocator']} | {m['case']} | {m['framework']} | "
                 f"{m['peak_rss_mb']:.0f} | {m['rss_after_import_mb']:.0f} |")
  return lines


def markdown_section(results: dict, intro: Sequence[str],
                     tables: Callable[[dict, str], list[str]]) -> str:
  """A BENCHMARKS.md section: how, where and when `results` were measured, `intro`,
  `tables(results, allocator)` per allocator, and each worker's peak memory."""
  env, load = results["environment"], results["load_average"]
  # As measured: JSON (`--from-json`) turns the tuples into lists.
  size = {k: tuple(v) if isinstance(v, list) else v for k, v in results["size"].items()}
  lines = [
      f"Run {results['started']}: `{results['command']}`",
      "",
      f"- machine: {env['cpu']}, {env['cores']} cores, {env['platform']}; devices "
      f"{env['devices']}",
      "- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
      f"- threads: {env['threads']} (torch.set_num_threads, OMP_NUM_THREADS; XLA:CPU one per "
      f"core)",
      f"- load average (1, 5, 15 min) before {tuple(round(v, 1) for v in load['before'])}, "
      f"after {tuple(round(v, 1) for v in load['after'])}",
      f"- sizes: {size}",
      *([f"- rounds: {results['rounds']} (every worker once per round, the frameworks "
         "interleaved; each time is the median round)"] if "rounds" in results else []),
      f"- tuned allocator: `GLIBC_TUNABLES={env['tuned_allocator']}`",
      "",
      *intro,
  ]
  for allocator in env["allocators"]:
    lines += ["", f"### Allocator: {allocator}", ""] + tables(results, allocator)
  lines += ["", "### Peak memory (each framework and case in its own process)", ""]
  lines += _memory_table(results)
  return "\n".join(lines) + "\n"


def write_markdown(path: Path, section: str, marker: str = "") -> None:
  """Replaces the generated section of `path` (between the result markers) with `section`."""
  begin, end = RESULTS_BEGIN.replace(":", f"{marker}:"), RESULTS_END.replace(":", f"{marker}:")
  text = path.read_text() if path.exists() else f"# Benchmarks\n\n{begin}\n{end}\n"
  if begin not in text:
    text += f"\n{begin}\n{end}\n"
  head, rest = text.split(begin, 1)
  tail = rest.split(end, 1)[1]
  path.write_text(f"{head}{begin}\n{section}{end}{tail}")


def add_flags(parser: argparse.ArgumentParser, results_file: str) -> None:
  """The flags of every benchmark script that runs workers and writes BENCHMARKS.md."""
  parser.add_argument("--quick", action="store_true", help="tiny sizes, few iterations (CI)")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
  parser.add_argument("--out-dir", type=Path, default=None,
                      help=f"{results_file} (default: benchmarks/, quick: a temp dir)")
  parser.add_argument("--markdown", type=Path, default=None,
                      help="file whose results section is rewritten (default: BENCHMARKS.md; "
                      "quick: none)")
  parser.add_argument("--from-json", type=Path, default=None,
                      help="re-render the markdown of an earlier results file")
  parser.add_argument("--rounds", type=int, default=1,
                      help="run every worker this many times, interleaving the frameworks; "
                      "each figure is the median round")
  parser.add_argument("--worker", help=argparse.SUPPRESS)


def markdown_path(args: argparse.Namespace) -> Path | None:
  """`--markdown`, else BENCHMARKS.md (none for `--quick`)."""
  return args.markdown or (None if args.quick else REPO / "BENCHMARKS.md")


def save_results(args: argparse.Namespace, results: dict, section: str, marker: str) -> Path:
  """Writes `results<marker>.json` and the BENCHMARKS.md section; returns the directory."""
  out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="benchmark_")) if args.quick
                             else REPO / "benchmarks")
  out_dir.mkdir(parents=True, exist_ok=True)
  (out_dir / f"results{marker}.json").write_text(json.dumps(results, indent=1))
  if markdown_path(args):
    write_markdown(markdown_path(args), section, marker=marker)
  print(section)
  print(f"results in {out_dir}", file=sys.stderr)
  return out_dir


if __name__ == "__main__":
  print(TUNED_ALLOCATOR)
