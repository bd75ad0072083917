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

    python -m experiments.benchmark

`--rounds 3` runs every worker three times, the frameworks interleaved, and keeps the
median round: use it for ratios on a shared machine. `--cases cnn_classifier` adds the
region classifier's backbone alone (no head), which splits its time into the two.

CI smoke run (tiny sizes, a few iterations; writes into a temporary directory):

    python -m experiments.benchmark --quick

The convolution forms behind `regionatt_jax.nn.conv` are `experiments/benchmark_conv.py`;
both time with `experiments/timing.py`.
"""

import argparse
import json
import time
from pathlib import Path

import numpy as np

from experiments import timing

# JAX, torch and matplotlib are imported in the functions that use them: each worker
# process measures the memory of one framework, so it must not load the other.

FRAMEWORKS = ("jax", "jax_flax_conv", "torch_eager", "torch_compile")
MODEL_CASES = ("attention_net", "region_classifier")
#: The region classifier's backbone alone (global mean, no head): with `region_classifier`
#: in the same run, it splits the classifier's time into convolutions and head.
BACKBONE_CASE = "cnn_classifier"

# Full and quick sizes: images (H = W), region-op feature map (H = W, C), classes.
SIZES = {
    "full": dict(image=64, op_hw=64, op_channels=64, classes=10, batch_sizes=(8, 32),
                 warmup=3, iters=20),
    "quick": dict(image=16, op_hw=16, op_channels=16, classes=10, batch_sizes=(2,),
                  warmup=1, iters=3),
}
GRID = (4, 4)
LEARNING_RATE = 1e-3


def _jax_model(case: str, framework: str, size: dict):
  import flax.linen as nn
  import regionatt_jax.nn as ra_nn
  from regionatt_jax.nn.conv import Conv
  conv = nn.Conv if framework == "jax_flax_conv" else Conv
  if case == "attention_net":
    return ra_nn.AttentionNet(size["classes"], conv=conv)
  return ra_nn.RegionAttentionClassifier(size["classes"], conv=conv,
                                         head=None if case == BACKBONE_CASE else "region")


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
  compiled, compile_times = timing.jax_timed_compile(forward, params, state, images)
  measured = timing.median_ms(lambda: compiled(params, state, images).block_until_ready(),
                              size["warmup"], size["iters"])
  rows.append(dict(kind="forward", **compile_times, **measured))

  carry = [params, tx.init(params), state]
  compiled, compile_times = timing.jax_timed_compile(train_step, *carry, images, labels,
                                               donate=(0, 1, 2))

  def step():
    carry[:] = compiled(*carry, images, labels)
    jax.block_until_ready(carry)

  rows.append(dict(kind="train_step", **compile_times,
                   **timing.median_ms(step, size["warmup"], size["iters"])))
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

  def mlp_scores(params, pooled):  # = regionatt_jax.nn.MLPScorer on region means
    h = jax.nn.relu(pooled @ params["w1"] + params["b1"])
    return (h @ params["w2"] + params["b2"])[..., 0]

  # "pooled": the scorer gets the region means read in place (what RegionAttention does
  # with MLPScorer); "regions": it gets the regions and takes their means itself.
  attend = {
      "pooled": lambda x, params: ra.region_attention(
          x, lambda pooled: mlp_scores(params, pooled), GRID, pool="mean")[0],
      "regions": lambda x, params: ra.region_attention(
          x, lambda r: mlp_scores(params, r.mean(axis=(-3, -2))), GRID)[0],
  }
  rows = []
  for form, forward in attend.items():
    # The loss value too, as torch's backward computes it: with the gradients alone,
    # XLA drops the weighted sum `y`, which a fixed cotangent makes dead code. The
    # cotangent is an argument: closed over, jit would embed it as a constant.
    def forward_backward(x, params, cotangent, forward=forward):
      return jax.value_and_grad(lambda x, p: jnp.sum(forward(x, p) * cotangent),
                                argnums=(0, 1))(x, params)

    for kind, fn, args in (("forward", forward, (x, params)),
                           ("forward_backward", forward_backward, (x, params, cotangent))):
      compiled, compile_times = timing.jax_timed_compile(fn, *args)
      measured = timing.median_ms(lambda: jax.block_until_ready(compiled(*args)),
                                  size["warmup"], size["iters"])
      rows.append(dict(kind=kind, form=form, **compile_times, **measured))
  return rows


# --------------------------------------------------------------------------- PyTorch


def _torch_model_rows(case: str, framework: str, batch: int, size: dict) -> list[dict]:
  import torch
  from torch.nn import functional as F
  from regionatt_jax import pytorch as ra_torch
  torch.manual_seed(0)
  model = (ra_torch.AttentionNet(size["classes"]) if case == "attention_net"
           else ra_torch.RegionAttentionClassifier(size["classes"],
                                                   head=case != BACKBONE_CASE))
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
                     **timing.median_ms(fn, size["warmup"], size["iters"])))
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
                       **timing.median_ms(fn, size["warmup"], size["iters"])))
  return rows


# ---------------------------------------------------------------------------- worker


def run_worker(spec: dict) -> dict:
  """Runs one (framework, case) over all batch sizes in this process.

  Args:
    spec: `{"framework", "case", "size", "threads"}`.

  Returns:
    `timing.worker_result`; each row has framework, case, batch, kind, median_ms, p25_ms,
    p75_ms, runs, compile_s, page_faults_per_run.
  """
  framework, case, size = spec["framework"], spec["case"], spec["size"]

  def rows_of(batch: int) -> list[dict]:
    if case == "region_op":
      return (_jax_op_rows(batch, size) if framework == "jax"
              else _torch_op_rows(framework, batch, size))
    if framework.startswith("jax"):
      return _jax_model_rows(case, framework, batch, size)
    return _torch_model_rows(case, framework, batch, size)

  return timing.worker_result(framework, spec["threads"], lambda: [
      dict(framework=framework, case=case, batch=batch, **row)
      for batch in size["batch_sizes"] for row in rows_of(batch)])


def plan(frameworks: list[str], cases: list[str]) -> list[tuple[str, str]]:
  """The (framework, case) pairs to run: `flax.linen.Conv` only in `AttentionNet`."""
  return [(framework, case) for case in cases for framework in frameworks
          if framework != "jax_flax_conv" or case == "attention_net"]


# --------------------------------------------------------------------------- reports


def _best(rows: list[dict], **match) -> dict | None:
  """The fastest row matching `match` (the faster form of the torch region op)."""
  found = [r for r in rows if all(r.get(k) == v for k, v in match.items())]
  return min(found, key=lambda r: r["median_ms"]) if found else None


def _fmt(value, digits=1):
  return "–" if value is None else f"{value:.{digits}f}"


def _model_table(results: dict, allocator: str) -> list[str]:
  rows = [r for r in results["rows"] if r["allocator"] == allocator]
  lines = ["| case | kind | batch | JAX jit ms (compile s: cold / cached) | "
           "JAX + flax.linen.Conv ms | "
           "torch eager ms | torch.compile ms (first call s) | eager / JAX | compile / JAX |",
           "|---|---|---|---|---|---|---|---|---|"]
  keys = sorted({(r["case"], r["kind"], r["batch"]) for r in rows},
                key=lambda k: ((*MODEL_CASES, BACKBONE_CASE, "region_op").index(k[0]), k[1], k[2]))
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


def markdown(results: dict) -> str:
  """The results section of BENCHMARKS.md."""
  return timing.markdown_section(
      results,
      ["Times are medians of steady-state runs; ratios > 1 mean JAX is faster. The",
       "region op shows its faster form (JAX: [pooled] or [regions]; torch: [einsum] or",
       "[multiply_sum])."],
      lambda results, allocator: _model_table(results, allocator) + [
          "", f"Targets, allocator {allocator}:", ""] + _targets_table(results, allocator))


def plot(results: dict, path: Path) -> None:
  """Time vs batch size per framework, one panel per (case, kind), tuned allocator first."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  allocator = results["environment"]["allocators"][0]
  rows = [r for r in results["rows"] if r["allocator"] == allocator]
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
  timing.add_flags(parser, "results.json and the PNG")
  parser.add_argument("--allocators", nargs="+", choices=tuple(timing.ALLOCATORS),
                      default=None, help="default: tuned and default (quick: tuned only)")
  parser.add_argument("--frameworks", nargs="+", choices=FRAMEWORKS, default=None,
                      help="default: all (quick: jax torch_eager; torch.compile alone "
                      "takes minutes to compile on 2 cores)")
  parser.add_argument("--cases", nargs="+",
                      choices=(*MODEL_CASES, BACKBONE_CASE, "region_op"),
                      default=[*MODEL_CASES, "region_op"])
  parser.add_argument("--batch-sizes", nargs="+", type=int, default=None)
  parser.add_argument("--iters", type=int, default=None, help="timed runs per measurement")
  parser.add_argument("--tag", default="",
                      help="names this run's results file and BENCHMARKS.md section")
  args = parser.parse_args(argv)
  if args.worker:
    print(json.dumps(run_worker(json.loads(args.worker))))
    return
  if args.from_json:  # The plot too.
    results = json.loads(args.from_json.read_text())
    suffix = args.from_json.stem.removeprefix("results")
    plot(results, args.from_json.parent / f"time_vs_batch{suffix}.png")
    timing.write_markdown(timing.markdown_path(args), markdown(results), marker=suffix)
    return
  allocators = args.allocators or (["tuned"] if args.quick else ["tuned", "default"])
  frameworks = args.frameworks or (["jax", "torch_eager"] if args.quick else list(FRAMEWORKS))
  size = dict(SIZES["quick" if args.quick else "full"])
  size.update({k: v for k, v in (("batch_sizes", args.batch_sizes), ("iters", args.iters))
               if v is not None})
  results = timing.run_suite("experiments.benchmark", "models", plan(frameworks, args.cases),
                             size, allocators, args.threads, args.timeout,
                             args.rounds)
  suffix = f"_{args.tag}" if args.tag else ""
  out_dir = timing.save_results(args, results, markdown(results), suffix)
  plot(results, out_dir / f"time_vs_batch{suffix}.png")


if __name__ == "__main__":
  main()
