r"""JAX (jit) vs PyTorch eager vs torch.compile: the same networks, timed the same way.

For every case and batch size it times the forward pass and the full train step
(forward, backward, Adam update; for the region-attention op: forward, and forward +
backward), as medians of steady-state runs after warm-up, with `block_until_ready` in
JAX (PyTorch on CPU is synchronous). JAX compile time (lower + compile) and the first
torch.compile call are reported apart from the steady state. Every (framework, case)
runs in its own subprocess, so each peak RSS is that framework's alone; all run with the
same thread count and under the same allocator setting (both settings by default).

Full run (writes benchmarks/results.json, benchmarks/time_vs_batch.png and the results
section of BENCHMARKS.md; ~15 min on 2 cores):

    .venv/bin/python experiments/benchmark.py

CI smoke run (tiny sizes, a few iterations; writes into a temporary directory):

    .venv/bin/python experiments/benchmark.py --quick

Only the convolution forms (the side-by-side comparison behind `regionatt_jax.nn.conv`):

    .venv/bin/python experiments/benchmark.py --suite conv
"""

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
from collections.abc import Callable
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
TUNED_ALLOCATOR = ("glibc.malloc.mmap_threshold=4294967296:"
                   "glibc.malloc.trim_threshold=4294967296")
ALLOCATORS = {"tuned": TUNED_ALLOCATOR, "default": None}
FRAMEWORKS = ("jax", "jax_flax_conv", "torch_eager", "torch_compile")
MODEL_CASES = ("attention_net", "region_classifier")
RESULTS_BEGIN, RESULTS_END = "<!-- benchmark results: begin -->", "<!-- benchmark results: end -->"

# Full and quick sizes: images (H = W), region-op feature map (H = W, C), classes.
SIZES = {
    "full": dict(image=64, op_hw=64, op_channels=64, classes=10, batch_sizes=(8, 32),
                 warmup=3, iters=20),
    "quick": dict(image=16, op_hw=16, op_channels=16, classes=10, batch_sizes=(2,),
                  warmup=1, iters=3),
}
GRID = (4, 4)
LEARNING_RATE = 1e-3


def _median_ms(fn: Callable[[], object], warmup: int, iters: int) -> dict:
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


# ----------------------------------------------------------------------------- JAX


def _jax_timed_compile(fn, *args, donate=()):
  """Compiles `fn` cold, then again as a fresh `jit` (what a second run of a script sees).

  The worker enables JAX's persistent compilation cache in an empty directory
  (`_enable_compilation_cache`), so the cold compile writes the executable there and
  the second one loads it. Returns the executable and a dict with `compile_s` (cold,
  trace + lower + XLA compile), its part `lower_s` and `compile_cached_s`, in seconds;
  the executable's temporaries `temp_mb`; and the process's peak RSS so far.
  """
  import jax
  times, lower_times = [], []
  for _ in range(2):
    jax.clear_caches()  # JAX also keeps compiled executables in memory; only disk may help
    start = time.perf_counter()
    lowered = jax.jit(fn, donate_argnums=donate).lower(*args)
    lower_times.append(time.perf_counter() - start)
    compiled = lowered.compile()
    times.append(time.perf_counter() - start)
  analysis = compiled.memory_analysis()
  return compiled, dict(
      compile_s=times[0], compile_cached_s=times[1],
      lower_s=lower_times[0],  # tracing and lowering to StableHLO, part of compile_s
      # Where JAX's peak RSS goes: the executable's temporaries, and the high-water mark
      # reached once it is compiled (before it has run).
      temp_mb=analysis.temp_size_in_bytes / 2**20 if analysis else None,
      peak_rss_after_compile_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def _enable_compilation_cache(directory: str) -> None:
  """Turns on JAX's persistent compilation cache in `directory`, for every executable."""
  import jax
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)


def _jax_model(case: str, framework: str, size: dict):
  import flax.linen as nn
  import regionatt_jax.nn as ra_nn
  from regionatt_jax.nn.conv import Conv
  conv = nn.Conv if framework == "jax_flax_conv" else Conv
  if case == "attention_net":
    return ra_nn.AttentionNet(size["classes"], conv=conv)
  return ra_nn.RegionAttentionClassifier(size["classes"], conv=conv)


def _jax_model_rows(case: str, framework: str, batch: int, size: dict) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import optax
  model = _jax_model(case, framework, size)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.standard_normal((batch, size["image"], size["image"], 3), np.float32))
  labels = jnp.asarray(rng.integers(0, size["classes"], batch))
  # Parameters do not depend on the batch; initializing on one image keeps the eager
  # init pass's buffers out of the peak RSS (the tuned allocator never hands them back).
  variables = model.init(jax.random.PRNGKey(0), images[:1])
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}
  tx = optax.adam(LEARNING_RATE)

  def forward(params, state, images):
    return model.apply({"params": params, **state}, images)

  def loss_fn(params, state, images, labels):
    logits, new_state = model.apply({"params": params, **state}, images, train=True,
                                    mutable=list(state))
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new_state

  def train_step(params, opt_state, state, images, labels):
    grads, new_state = jax.grad(loss_fn, has_aux=True)(params, state, images, labels)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, new_state

  rows = []
  compiled, compile_times = _jax_timed_compile(forward, params, state, images)
  timing = _median_ms(lambda: compiled(params, state, images).block_until_ready(),
                      size["warmup"], size["iters"])
  rows.append(dict(kind="forward", **compile_times, **timing))

  carry = [params, tx.init(params), state]
  compiled, compile_times = _jax_timed_compile(train_step, *carry, images, labels,
                                               donate=(0, 1, 2))

  def step():
    carry[:] = compiled(*carry, images, labels)
    jax.block_until_ready(carry)

  rows.append(dict(kind="train_step", **compile_times,
                   **_median_ms(step, size["warmup"], size["iters"])))
  return rows


def _jax_op_rows(batch: int, size: dict) -> list[dict]:
  import jax
  import jax.numpy as jnp
  import regionatt_jax as ra
  hw, c = size["op_hw"], size["op_channels"]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, hw, hw, c), np.float32))
  cotangent = jnp.asarray(rng.standard_normal((batch, hw // GRID[0], hw // GRID[1], c),
                                              np.float32))
  params = {"w1": jnp.asarray(rng.standard_normal((c, 64), np.float32) / np.sqrt(c)),
            "b1": jnp.zeros(64), "w2": jnp.asarray(rng.standard_normal((64, 1), np.float32) / 8),
            "b2": jnp.zeros(1)}

  def mlp_scores(params, regions):  # = regionatt_jax.nn.MLPScorer on region means
    h = jax.nn.relu(regions.mean(axis=(-3, -2)) @ params["w1"] + params["b1"])
    return (h @ params["w2"] + params["b2"])[..., 0]

  def forward(x, params):
    return ra.region_attention(x, lambda r: mlp_scores(params, r), GRID)[0]

  def forward_backward(x, params):
    return jax.grad(lambda x, p: jnp.sum(forward(x, p) * cotangent), argnums=(0, 1))(x, params)

  rows = []
  for kind, fn in (("forward", forward), ("forward_backward", forward_backward)):
    compiled, compile_times = _jax_timed_compile(fn, x, params)
    timing = _median_ms(lambda: jax.block_until_ready(compiled(x, params)),
                        size["warmup"], size["iters"])
    rows.append(dict(kind=kind, **compile_times, **timing))
  return rows


def _jax_conv_form_rows(batch: int, size: dict) -> list[dict]:
  """The forms tried for a 3x3 convolution's forward, input and weight gradients."""
  import jax
  import jax.numpy as jnp
  from jax import lax
  from regionatt_jax.nn.conv import conv2d
  hw, cin, cout = size["image"], size["op_channels"], 2 * size["op_channels"]
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((batch, hw, hw, cin), np.float32))
  kernel = jnp.asarray(rng.standard_normal((3, 3, cin, cout), np.float32) / np.sqrt(9 * cin))
  dy = jnp.asarray(rng.standard_normal((batch, hw, hw, cout), np.float32))
  nhwc = ("NHWC", "HWIO", "NHWC")

  def native(x, k):
    return lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=nhwc)

  def taps(a):
    padded = jnp.pad(a, ((0, 0), (1, 1), (1, 1), (0, 0)))
    return [padded[:, i:i + hw, j:j + hw, :] for i in range(3) for j in range(3)]

  def patches(a):  # (B, H, W, 9 * C), tap-major like the kernel's (kh, kw, C) rows
    p = lax.conv_general_dilated_patches(a, (3, 3), (1, 1), "SAME", dimension_numbers=nhwc)
    return p.reshape(*p.shape[:3], a.shape[-1], 9).swapaxes(-1, -2).reshape(*p.shape)

  def dx_per_tap(k, dy):  # dx[b, h, w] = sum_ij (dy @ k_ij^T)[b, h+1-i, w+1-j]
    out = 0
    for t, tap in enumerate(taps_of_outputs(dy, k)):
      i, j = divmod(t, 3)
      out = out + jnp.pad(tap, ((0, 0), (1, 1), (1, 1), (0, 0)))[:, 2 - i:2 - i + hw,
                                                                   2 - j:2 - j + hw]
    return out

  def taps_of_outputs(dy, k):
    return [(dy.reshape(-1, cout) @ k[i, j].T).reshape(batch, hw, hw, cin)
            for i in range(3) for j in range(3)]

  def full(conv, dtype):
    def fwd_dx_dw(x, k, dy):
      y, vjp = jax.vjp(conv, x.astype(dtype), k.astype(dtype))
      return y, vjp(dy.astype(dtype))
    return fwd_dx_dw

  forms = {
      "forward: lax.conv NHWC/HWIO": (native, (x, kernel)),
      "forward: lax.conv NCHW/OIHW (+ transposes)": (
          lambda x, k: lax.conv_general_dilated(x.transpose(0, 3, 1, 2), k.transpose(3, 2, 0, 1),
                                                (1, 1), "SAME").transpose(0, 2, 3, 1), (x, kernel)),
      "forward: 9 per-tap matmuls": (
          lambda x, k: sum(t.reshape(-1, cin) @ k[i // 3, i % 3] for i, t in enumerate(taps(x))),
          (x, kernel)),
      "forward: patches + one matmul": (
          lambda x, k: patches(x).reshape(-1, 9 * cin) @ k.reshape(9 * cin, cout), (x, kernel)),
      "dx: native VJP": (lambda x, k, dy: jax.vjp(lambda a: native(a, k), x)[1](dy), (x, kernel, dy)),
      "dx: 9 per-tap matmuls, shifted outputs": (dx_per_tap, (kernel, dy)),
      "dw: native VJP": (lambda x, k, dy: jax.vjp(lambda w: native(x, w), k)[1](dy),
                         (x, kernel, dy)),
      "dw: 9 per-tap matmuls, unrolled": (
          lambda x, dy: [t.reshape(-1, cin).T @ dy.reshape(-1, cout) for t in taps(x)], (x, dy)),
      "dw: patches + one matmul": (
          lambda x, dy: patches(x).reshape(-1, 9 * cin).T @ dy.reshape(-1, cout), (x, dy)),
      "fwd+dx+dw: lax.conv f32": (full(native, jnp.float32), (x, kernel, dy)),
      "fwd+dx+dw: Conv f32": (full(conv2d, jnp.float32), (x, kernel, dy)),
      "fwd+dx+dw: lax.conv bf16": (full(native, jnp.bfloat16), (x, kernel, dy)),
      "fwd+dx+dw: Conv bf16": (full(conv2d, jnp.bfloat16), (x, kernel, dy)),
  }
  rows = []
  for kind, (fn, args) in forms.items():
    compiled, compile_times = _jax_timed_compile(fn, *args)
    rows.append(dict(kind=kind, **compile_times,
                     **_median_ms(lambda: jax.block_until_ready(compiled(*args)),
                                  size["warmup"], size["iters"])))
  return rows


# --------------------------------------------------------------------------- PyTorch


def _torch_model_rows(case: str, framework: str, batch: int, size: dict) -> list[dict]:
  import torch
  from torch.nn import functional as F
  from regionatt_jax import pytorch as ra_torch
  torch.manual_seed(0)
  model = (ra_torch.AttentionNet(size["classes"]) if case == "attention_net"
           else ra_torch.RegionAttentionClassifier(size["classes"]))
  images = torch.randn(batch, 3, size["image"], size["image"])
  labels = torch.randint(0, size["classes"], (batch,))
  optimizer = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
  run = torch.compile(model) if framework == "torch_compile" else model

  def forward():
    with torch.no_grad():
      run(images)

  def train_step():
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(run(images), labels).backward()
    optimizer.step()

  rows = []
  for kind, fn, mode in (("forward", forward, model.eval), ("train_step", train_step, model.train)):
    mode()
    start = time.perf_counter()
    fn()  # torch.compile compiles here
    first_s = time.perf_counter() - start
    rows.append(dict(kind=kind, compile_s=first_s if framework == "torch_compile" else None,
                     **_median_ms(fn, size["warmup"], size["iters"])))
  return rows


def _torch_op_rows(framework: str, batch: int, size: dict) -> list[dict]:
  import torch
  from regionatt_jax import pytorch as ra_torch
  torch.manual_seed(0)
  hw, c = size["op_hw"], size["op_channels"]
  x = torch.randn(batch, hw, hw, c, requires_grad=True)
  cotangent = torch.randn(batch, hw // GRID[0], hw // GRID[1], c)
  scorer = ra_torch.MLPScorer(c)
  rows = []
  for form in ra_torch.FORMS:
    def op(x, form=form):
      return ra_torch.region_attention(x, scorer, GRID, form)[0]
    run = torch.compile(op) if framework == "torch_compile" else op

    def forward():
      with torch.no_grad():
        run(x)

    def forward_backward():
      x.grad = None
      scorer.zero_grad(set_to_none=True)
      (run(x) * cotangent).sum().backward()

    for kind, fn in (("forward", forward), ("forward_backward", forward_backward)):
      start = time.perf_counter()
      fn()
      first_s = time.perf_counter() - start
      rows.append(dict(kind=kind, form=form,
                       compile_s=first_s if framework == "torch_compile" else None,
                       **_median_ms(fn, size["warmup"], size["iters"])))
  return rows


def _torch_conv_rows(batch: int, size: dict) -> list[dict]:
  import torch
  hw, cin, cout = size["image"], size["op_channels"], 2 * size["op_channels"]
  conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
  rows = []
  for layout, memory_format in (("NCHW", torch.contiguous_format),
                                ("channels_last", torch.channels_last)):
    conv = conv.to(memory_format=memory_format)
    x = torch.randn(batch, cin, hw, hw).to(memory_format=memory_format).requires_grad_()
    dy = torch.randn(batch, cout, hw, hw).to(memory_format=memory_format)

    def forward():
      with torch.no_grad():
        conv(x)

    def fwd_dx_dw():
      x.grad = None
      conv.zero_grad(set_to_none=True)
      conv(x).backward(dy)

    for kind, fn in ((f"forward: {layout}", forward), (f"fwd+dx+dw: {layout}", fwd_dx_dw)):
      rows.append(dict(kind=kind, compile_s=None,
                       **_median_ms(fn, size["warmup"], size["iters"])))
  return rows


# ---------------------------------------------------------------------------- worker


def _set_threads(framework: str, threads: int) -> None:
  if framework.startswith("torch"):
    import torch
    torch.set_num_threads(threads)


def run_worker(spec: dict) -> dict:
  """Runs one (framework, case) over all batch sizes in this process.

  Args:
    spec: `{"framework", "case", "size", "threads"}`.

  Returns:
    `{"rows": [...], "peak_rss_mb", "rss_after_import_mb"}`; each row has framework,
    case, batch, kind, median_ms, p25_ms, p75_ms, runs, compile_s, page_faults_per_run.
  """
  framework, case, size = spec["framework"], spec["case"], spec["size"]
  if framework.startswith("jax"):
    import jax  # noqa: F401  (import cost counted before the cases, as for torch)
    import regionatt_jax.nn  # noqa: F401
    cache = tempfile.mkdtemp(prefix="jax_cache_")
    atexit.register(shutil.rmtree, cache, True)
    _enable_compilation_cache(cache)
  else:
    import torch  # noqa: F401
    import regionatt_jax.pytorch  # noqa: F401
  _set_threads(framework, spec["threads"])
  rss_after_import = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  rows = []
  for batch in size["batch_sizes"]:
    if case == "region_op":
      found = (_jax_op_rows(batch, size) if framework == "jax"
               else _torch_op_rows(framework, batch, size))
    elif case == "conv":
      found = (_jax_conv_form_rows(batch, size) if framework == "jax"
               else _torch_conv_rows(batch, size))
    elif framework.startswith("jax"):
      found = _jax_model_rows(case, framework, batch, size)
    else:
      found = _torch_model_rows(case, framework, batch, size)
    rows += [dict(framework=framework, case=case, batch=batch, **row) for row in found]
  if framework.startswith("torch"):
    import torch
    threads = torch.get_num_threads()
  else:
    threads = os.cpu_count()  # XLA:CPU's intra-op pool: one thread per core
  return dict(rows=rows, threads=threads, rss_after_import_mb=rss_after_import,
              peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


# ---------------------------------------------------------------------------- parent


def _plan(suite: str, frameworks: list[str], cases: list[str]) -> list[tuple[str, str]]:
  """The (framework, case) pairs to run."""
  if suite == "conv":
    return [(f, "conv") for f in ("jax", "torch_eager") if f in frameworks]
  return [(framework, case) for case in cases for framework in frameworks
          if framework != "jax_flax_conv" or case == "attention_net"]


def _run_subprocess(spec: dict, allocator: str | None, threads: int, timeout_s: float) -> dict:
  env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"}
  env.update(OMP_NUM_THREADS=str(threads), PYTHONPATH=f"{REPO}{os.pathsep}"
             f"{env.get('PYTHONPATH', '')}")
  if allocator:
    env["GLIBC_TUNABLES"] = allocator
  done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env,
                        capture_output=True, text=True, timeout=timeout_s, check=False)
  if done.returncode:
    raise RuntimeError(f"worker {spec['framework']}/{spec['case']} failed:\n{done.stderr[-3000:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def _environment(threads: int, allocators: list[str]) -> dict:
  import flax
  import jax
  import jaxlib
  versions = dict(python=platform.python_version(), jax=jax.__version__,
                  jaxlib=jaxlib.__version__, flax=flax.__version__)
  try:
    versions["torch"] = subprocess.run(
        [sys.executable, "-c", "import torch; print(torch.__version__)"], capture_output=True,
        text=True, check=True).stdout.strip()
  except subprocess.CalledProcessError:
    versions["torch"] = None
  cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text()
              .splitlines() if line.startswith("model name")), platform.processor())
  return dict(versions=versions, cpu=cpu, cores=os.cpu_count(), threads=threads,
              devices=[str(d) for d in jax.devices()], allocators=allocators,
              tuned_allocator=TUNED_ALLOCATOR, platform=platform.platform())


def run_all(suite: str, size: dict, frameworks: list[str], cases: list[str],
            allocators: list[str], threads: int, timeout_s: float) -> dict:
  """Runs every (allocator, framework, case) worker; returns the results document."""
  load_before = os.getloadavg()
  results = dict(environment=_environment(threads, allocators), size=size, suite=suite,
                 command=" ".join([Path(sys.executable).name, *sys.argv]),
                 started=time.strftime("%Y-%m-%d %H:%M:%S %Z"), rows=[], memory=[])
  for allocator in allocators:
    for framework, case in _plan(suite, frameworks, cases):
      spec = dict(framework=framework, case=case, size=size, threads=threads)
      print(f"[{allocator}] {framework} / {case} ...", file=sys.stderr, flush=True)
      out = _run_subprocess(spec, ALLOCATORS[allocator], threads, timeout_s)
      results["rows"] += [dict(allocator=allocator, **row) for row in out["rows"]]
      results["memory"].append(dict(allocator=allocator, framework=framework, case=case,
                                    threads=out["threads"], peak_rss_mb=out["peak_rss_mb"],
                                    rss_after_import_mb=out["rss_after_import_mb"]))
  results["load_average"] = dict(before=load_before, after=os.getloadavg())
  return results


# --------------------------------------------------------------------------- reports


def _best(rows: list[dict], **match) -> dict | None:
  """The fastest row matching `match` (the faster form of the torch region op)."""
  found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
  return min(found, key=lambda r: r["median_ms"]) if found else None


def _fmt(value, digits=1):
  return "–" if value is None else f"{value:.{digits}f}"


def _model_table(results: dict, allocator: str) -> list[str]:
  rows = [r for r in results["rows"] if r["allocator"] == allocator and r["case"] != "conv"]
  lines = ["| case | kind | batch | JAX jit ms (compile s: cold / cached) | "
           "JAX + flax.linen.Conv ms | "
           "torch eager ms | torch.compile ms (first call s) | eager / JAX | compile / JAX |",
           "|---|---|---|---|---|---|---|---|---|"]
  keys = sorted({(r["case"], r["kind"], r["batch"]) for r in rows},
                key=lambda k: ((*MODEL_CASES, "region_op").index(k[0]), k[1], k[2]))
  for case, kind, batch in keys:
    match = dict(case=case, kind=kind, batch=batch)
    jax_row, flax_conv = _best(rows, framework="jax", **match), _best(
        rows, framework="jax_flax_conv", **match)
    eager, compiled = (_best(rows, framework="torch_eager", **match),
                       _best(rows, framework="torch_compile", **match))

    def cell(row):
      if row is None:
        return "–"
      form = f" [{row['form']}]" if row.get("form") else ""
      compile_s = ""
      if row.get("compile_s") is not None:
        cached = row.get("compile_cached_s")
        compile_s = f" ({row['compile_s']:.2f}" + (
            f" / {cached:.2f})" if cached is not None else ")")
      return f"{row['median_ms']:.2f}{compile_s}{form}"

    def ratio(row):
      return _fmt(row["median_ms"] / jax_row["median_ms"], 2) if row and jax_row else "–"

    lines.append(f"| {case} | {kind} | {batch} | {cell(jax_row)} | {cell(flax_conv)} | "
                 f"{cell(eager)} | {cell(compiled)} | {ratio(eager)} | {ratio(compiled)} |")
  return lines


#: The issue's targets: (case, kind, framework, minimum of framework time / JAX time).
SPEED_TARGETS = (
    ("region_op", "forward", "torch_eager", 2.0),
    ("region_op", "forward", "torch_compile", 1.2),
    ("region_op", "forward_backward", "torch_eager", 1.5),
    ("region_op", "forward_backward", "torch_compile", 1.0),
    ("attention_net", "train_step", "torch_eager", 1.0),
)
MAX_COMPILE_S = 1.0


def _targets_table(results: dict, allocator: str) -> list[str]:
  """Each target, what this run measured, and whether it is met."""
  rows = [r for r in results["rows"] if r["allocator"] == allocator]
  lines = ["| target | batch | measured | met |", "|---|---|---|---|"]
  yes_no = lambda ok: "yes" if ok else "**no**"
  for case, kind, framework, minimum in SPEED_TARGETS:
    for batch in sorted({r["batch"] for r in rows if r["case"] == case}):
      jax_row = _best(rows, framework="jax", case=case, kind=kind, batch=batch)
      other = _best(rows, framework=framework, case=case, kind=kind, batch=batch)
      if jax_row and other:
        ratio = other["median_ms"] / jax_row["median_ms"]
        lines.append(f"| {case} {kind}: JAX >= {minimum}x {framework} | {batch} | "
                     f"{ratio:.2f}x | {yes_no(ratio >= minimum)} |")
  compiles = [r for r in rows if r["framework"] == "jax" and r.get("compile_s") is not None]
  for key, label in (("compile_s", "cold"), ("compile_cached_s", "from the persistent cache")):
    worst = max(compiles, key=lambda r: r.get(key) or 0.0, default=None)
    if worst and worst.get(key) is not None:
      lines.append(f"| JAX compile <= {MAX_COMPILE_S:.0f} s per function, {label} | all | "
                   f"max {worst[key]:.2f} s ({worst['case']} {worst['kind']}, batch "
                   f"{worst['batch']}) | {yes_no(worst[key] <= MAX_COMPILE_S)} |")
  memory = {(m["case"], m["framework"]): m["peak_rss_mb"] for m in results["memory"]
            if m["allocator"] == allocator}
  for case in dict.fromkeys(c for c, _ in memory):
    if (case, "jax") in memory and (case, "torch_eager") in memory:
      jax_mb, eager_mb = memory[case, "jax"], memory[case, "torch_eager"]
      lines.append(f"| {case}: JAX peak RSS <= torch eager's | all | {jax_mb:.0f} vs "
                   f"{eager_mb:.0f} MB | {yes_no(jax_mb <= eager_mb)} |")
  return lines


def _conv_table(results: dict, allocator: str) -> list[str]:
  rows = [r for r in results["rows"] if r["allocator"] == allocator and r["case"] == "conv"]
  lines = ["| framework | form | batch | median ms | p25-p75 ms |", "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['framework']} | {r['kind']} | {r['batch']} | {r['median_ms']:.1f} | "
                 f"{r['p25_ms']:.1f}-{r['p75_ms']:.1f} |")
  return lines


def _memory_table(results: dict) -> list[str]:
  lines = ["| allocator | case | framework | peak RSS MB | RSS after imports MB |",
           "|---|---|---|---|---|"]
  for m in results["memory"]:
    lines.append(f"| {m['allocator']} | {m['case']} | {m['framework']} | "
                 f"{m['peak_rss_mb']:.0f} | {m['rss_after_import_mb']:.0f} |")
  return lines


def markdown(results: dict) -> str:
  """The results section of BENCHMARKS.md."""
  env = results["environment"]
  load = results["load_average"]
  lines = [
      f"Run {results['started']}: `{results['command']}`",
      "",
      f"- machine: {env['cpu']}, {env['cores']} cores, {env['platform']}; devices "
      f"{env['devices']}",
      f"- versions: " + ", ".join(f"{k} {v}" for k, v in env["versions"].items()),
      f"- threads: {env['threads']} (torch.set_num_threads, OMP_NUM_THREADS; XLA:CPU one per "
      f"core)",
      f"- load average (1, 5, 15 min) before {tuple(round(v, 1) for v in load['before'])}, "
      f"after {tuple(round(v, 1) for v in load['after'])}",
      f"- sizes: {results['size']}",
      f"- tuned allocator: `GLIBC_TUNABLES={env['tuned_allocator']}`",
      "",
      "Times are medians of steady-state runs; ratios > 1 mean JAX is faster. The torch",
      "region op shows its faster form ([einsum] or [multiply_sum]).",
  ]
  for allocator in env["allocators"]:
    lines += ["", f"### Allocator: {allocator}", ""]
    if results["suite"] == "conv":
      lines += _conv_table(results, allocator)
    else:
      lines += _model_table(results, allocator)
      lines += ["", f"Targets, allocator {allocator}:", ""] + _targets_table(results, allocator)
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


def plot(results: dict, path: Path) -> None:
  """Time vs batch size per framework, one panel per (case, kind), tuned allocator first."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  allocator = results["environment"]["allocators"][0]
  rows = [r for r in results["rows"] if r["allocator"] == allocator and r["case"] != "conv"]
  panels = sorted({(r["case"], r["kind"]) for r in rows})
  columns = min(3, len(panels))
  fig, axes = plt.subplots(-(-len(panels) // columns), columns,
                           figsize=(4.2 * columns, 3.4 * -(-len(panels) // columns)),
                           squeeze=False)
  colors = dict(zip(FRAMEWORKS, ("tab:blue", "tab:cyan", "tab:orange", "tab:red")))
  for ax, (case, kind) in zip(axes.flat, panels):
    for framework in FRAMEWORKS:
      batches = sorted({r["batch"] for r in rows if r["framework"] == framework
                        and r["case"] == case and r["kind"] == kind})
      if batches:
        times = [_best(rows, framework=framework, case=case, kind=kind, batch=b)["median_ms"]
                 for b in batches]
        ax.plot(batches, times, marker="o", label=framework, color=colors[framework])
    ax.set(title=f"{case}\n{kind}", xlabel="batch size", ylabel="median ms")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.legend(fontsize=7)
  fig.suptitle(f"{results['environment']['cpu']}, allocator: {allocator}", fontsize=9)
  fig.tight_layout()
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, few iterations (CI)")
  parser.add_argument("--suite", choices=("models", "conv"), default="models")
  parser.add_argument("--allocators", nargs="+", choices=tuple(ALLOCATORS),
                      default=None, help="default: tuned and default (quick: tuned only)")
  parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=None,
                      help="default: all (quick: jax torch_eager; torch.compile alone "
                      "takes minutes to compile on 2 cores)")
  parser.add_argument("--cases", nargs="+", choices=(*MODEL_CASES, "region_op"),
                      default=[*MODEL_CASES, "region_op"])
  parser.add_argument("--batch-sizes", nargs="+", type=int, default=None)
  parser.add_argument("--iters", type=int, default=None, help="timed runs per measurement")
  parser.add_argument("--threads", type=int, default=os.cpu_count())
  parser.add_argument("--timeout", type=float, default=1800, help="seconds per worker")
  parser.add_argument("--out-dir", type=Path, default=None,
                      help="results.json and the PNG (default: benchmarks/, quick: a temp dir)")
  parser.add_argument("--markdown", type=Path, default=None,
                      help="file whose results section is rewritten (default: BENCHMARKS.md; "
                      "quick: none)")
  parser.add_argument("--tag", default="",
                      help="names this run's results file and BENCHMARKS.md section")
  parser.add_argument("--from-json", type=Path, default=None,
                      help="re-render the markdown and plot of an earlier results file")
  parser.add_argument("--worker", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    print(json.dumps(run_worker(json.loads(args.worker))))
    return
  allocators = args.allocators or (["tuned"] if args.quick else ["tuned", "default"])
  out_dir = args.out_dir or (Path(tempfile.mkdtemp(prefix="benchmark_")) if args.quick
                             else REPO / "benchmarks")
  out_dir.mkdir(parents=True, exist_ok=True)
  if args.from_json:
    results = json.loads(args.from_json.read_text())
    suffix = args.from_json.stem.removeprefix("results")
    if results["suite"] == "models":
      plot(results, args.from_json.parent / f"time_vs_batch{suffix}.png")
    write_markdown(args.markdown or REPO / "BENCHMARKS.md", markdown(results), marker=suffix)
    return
  frameworks = args.frameworks or (["jax", "torch_eager"] if args.quick else list(FRAMEWORKS))
  size = dict(SIZES["quick" if args.quick else "full"])
  if args.suite == "conv" and not args.quick:  # one batch: 13 forms of a 19-GFLOP conv
    size.update(batch_sizes=(32,), iters=10)
  size.update({k: v for k, v in (("batch_sizes", args.batch_sizes), ("iters", args.iters))
               if v is not None})
  results = run_all(args.suite, size, frameworks, args.cases, allocators, args.threads,
                    args.timeout)
  suffix = "".join(f"_{part}" for part in (args.suite, args.tag) if part and part != "models")
  (out_dir / f"results{suffix}.json").write_text(json.dumps(results, indent=1))
  section = markdown(results)
  if args.suite == "models":
    plot(results, out_dir / f"time_vs_batch{suffix}.png")
  markdown_path = args.markdown or (None if args.quick else REPO / "BENCHMARKS.md")
  if markdown_path:
    write_markdown(markdown_path, section, marker=suffix)
  print(section)
  print(f"results in {out_dir}", file=sys.stderr)


if __name__ == "__main__":
  main()
