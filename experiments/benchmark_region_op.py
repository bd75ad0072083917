r"""Speed of the region-attention op against memory bandwidth, measured in one run.

Times, for each size: the weighted sum alone in three forms (the library's, XLA's reduce
over the grid axes of the free reshape, and an einsum over transposed regions), and
`region_attention` with an MLP scorer on region means, forward and forward+backward.
Prints median milliseconds, compile seconds and GB/s set against the copy bandwidth
(read + write) and the read-only bandwidth measured on the same arrays in the same run:
the weighted sum reads x and writes 1/N of it, so reading bounds it.

  GLIBC_TUNABLES=$(python -m experiments.timing) \
    python -m experiments.benchmark_region_op            # full sizes (~1 min)
  python -m experiments.benchmark_region_op --quick      # tiny sizes, seconds (CI)

(`python -m experiments.timing` prints the tuned allocator setting of every benchmark.)
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import timing
import regionatt_jax as ra

FULL_CASES = [((32, 64, 64, 64), (4, 4)), ((128, 64, 64, 64), (4, 4)),
              ((128, 64, 64, 64), (8, 8))]
QUICK_CASES = [((4, 16, 16, 8), (4, 4))]


def median_seconds(fn, *args, repeats):
  """Median wall time of `fn(*args)` over `repeats` runs after one warm-up call."""
  return timing.median_ms(lambda: jax.block_until_ready(fn(*args)), warmup=1,
                          iters=repeats)["median_ms"] / 1e3


def compile_seconds(jitted, *args):
  start = time.perf_counter()
  jitted.lower(*args).compile()
  return time.perf_counter() - start


def copy_bandwidth(x, repeats):
  """Read + write GB/s of an in-place scale of `x` (donated, so no fresh pages)."""
  scale = jax.jit(lambda v: v * 1.0001, donate_argnums=0)
  value = [scale(x + 0)]

  def step():
    value[0] = jax.block_until_ready(scale(value[0]))

  seconds = timing.median_ms(step, warmup=1, iters=repeats)["median_ms"] / 1e3
  return 2 * x.nbytes / seconds / 1e9


def read_bandwidth(x, repeats):
  """Read-only GB/s: a sum of `x` to one number reads it once and writes nothing."""
  total = jax.jit(jnp.sum)
  return x.nbytes / median_seconds(total, x, repeats=repeats) / 1e9


def mlp_scorer(params):
  """Score regions by a 2-layer MLP on their channel means: `(..., N, h, w, C) -> (..., N)`."""
  def score_fn(regions):
    hidden = jax.nn.relu(regions.mean(axis=(-3, -2)) @ params["w1"])
    return (hidden @ params["w2"])[..., 0]
  return score_fn


def weighted_sum_forms(grid):
  gh, gw = grid

  def library(x, a):
    return ra.region_attention(x, lambda r: jnp.log(a), grid=grid, normalize="softmax")[0]

  def reduce_over_grid_axes(x, a):
    b, hh, ww, c = x.shape
    blocks = x.reshape(b, gh, hh // gh, gw, ww // gw, c)
    return jnp.sum(blocks * a.reshape(b, gh, 1, gw, 1, 1), axis=(1, 3))

  def einsum_over_regions(x, a):
    return jnp.einsum("bn,bnhwc->bhwc", a, ra.partition(x, grid=grid))

  return {"library": library, "reduce": reduce_over_grid_axes, "einsum": einsum_over_regions}


def run_case(shape, grid, repeats):
  key_x, key_a, key_1, key_2 = jax.random.split(jax.random.key(0), 4)
  x = jax.random.normal(key_x, shape, jnp.float32)
  n = grid[0] * grid[1]
  a = jax.nn.softmax(jax.random.normal(key_a, (shape[0], n)))
  params = {"w1": jax.random.normal(key_1, (shape[-1], 32)) / np.sqrt(shape[-1]),
            "w2": jax.random.normal(key_2, (32, 1)) / np.sqrt(32)}
  x_bytes = x.nbytes
  y_bytes = x_bytes // n
  row = {"shape": shape, "grid": grid, "x_MB": x_bytes / 2**20,
         "copy_GBps": copy_bandwidth(x, repeats), "read_GBps": read_bandwidth(x, repeats)}

  forms = weighted_sum_forms(grid)
  expected = forms["einsum"](x, a)
  for name, form in forms.items():
    jitted = jax.jit(form)
    row[f"sum_{name}_compile_s"] = compile_seconds(jitted, x, a)
    np.testing.assert_allclose(jitted(x, a), expected, rtol=1e-4, atol=1e-5,
                               err_msg=f"weighted-sum form {name} disagrees with einsum")
    seconds = median_seconds(jitted, x, a, repeats=repeats)
    row[f"sum_{name}_ms"] = seconds * 1e3
    # One read of x and one write of y.
    row[f"sum_{name}_GBps"] = (x_bytes + y_bytes) / seconds / 1e9

  def forward(params, x):
    return ra.region_attention(x, mlp_scorer(params), grid=grid)[0]

  def loss(params, x):
    return jnp.sum(forward(params, x) ** 2)

  fwd = jax.jit(forward)
  fwd_bwd = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
  row["op_fwd_compile_s"] = compile_seconds(fwd, params, x)
  row["op_fwd_bwd_compile_s"] = compile_seconds(fwd_bwd, params, x)
  seconds = median_seconds(fwd, params, x, repeats=repeats)
  row["op_fwd_ms"] = seconds * 1e3
  # Two passes must read x (the scorer's means, then the weighted sum); y is written.
  row["op_fwd_GBps"] = (2 * x_bytes + y_bytes) / seconds / 1e9
  row["op_fwd_bwd_ms"] = median_seconds(fwd_bwd, params, x, repeats=repeats) * 1e3
  return row


def format_row(row):
  copy, read = row["copy_GBps"], row["read_GBps"]
  lines = [f"x {row['shape']} ({row['x_MB']:.0f} MB), grid {row['grid']}: "
           f"copy bandwidth (read+write) {copy:.1f} GB/s, read-only {read:.1f} GB/s"]
  for name in ("library", "reduce", "einsum"):
    lines.append(
        f"  weighted sum, {name:8s} {row[f'sum_{name}_ms']:8.2f} ms  "
        f"{row[f'sum_{name}_GBps']:6.1f} GB/s = {row[f'sum_{name}_GBps'] / copy:4.0%} of copy, "
        f"{row[f'sum_{name}_GBps'] / read:4.0%} of read"
        f"  (compile {row[f'sum_{name}_compile_s']:.2f} s)")
  lines.append(
      f"  region_attention fwd   {row['op_fwd_ms']:8.2f} ms  {row['op_fwd_GBps']:6.1f} GB/s "
      f"= {row['op_fwd_GBps'] / copy:4.0%} of copy, {row['op_fwd_GBps'] / read:4.0%} of read "
      f"(compile {row['op_fwd_compile_s']:.2f} s)")
  lines.append(
      f"  region_attention fwd+bwd {row['op_fwd_bwd_ms']:6.2f} ms "
      f"({row['op_fwd_bwd_ms'] / row['op_fwd_ms']:.1f}x fwd; compile "
      f"{row['op_fwd_bwd_compile_s']:.2f} s)")
  lines.append(
      f"  library vs einsum {row['sum_einsum_ms'] / row['sum_library_ms']:.1f}x faster, "
      f"vs reduce {row['sum_reduce_ms'] / row['sum_library_ms']:.1f}x faster")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI")
  parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure")
  parser.add_argument("--json", default=None, help="also write the rows to this file")
  args = parser.parse_args(argv)
  cases = QUICK_CASES if args.quick else FULL_CASES
  repeats = args.repeats or (3 if args.quick else 21)
  env = timing.environment({"jax": jax.__version__})
  allocator = os.environ.get("GLIBC_TUNABLES")
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {env['cpu']}, "
        f"{env['cores']} cores, allocator "
        f"{'tuned' if allocator == timing.TUNED_ALLOCATOR else allocator or 'default'}, "
        f"medians of {repeats}")
  rows = []
  for shape, grid in cases:
    rows.append(run_case(shape, grid, repeats))
    print(format_row(rows[-1]), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
