r"""Speed of the region-attention op against memory bandwidth, measured in one run.

Times, for each size: the weighted sum alone in three forms (the library's, XLA's reduce
over the grid axes of the free reshape, and an einsum over transposed regions), and
`region_attention` with an MLP scorer on region means, forward and forward+backward, in
both forms: `pooled` (the scorer gets the means read in place, `pool="mean"`, as
`RegionAttention` does with `MLPScorer`) and `regions` (it gets the regions).
Prints median milliseconds, compile seconds and GB/s set against the copy bandwidth
(read + write) and the read-only bandwidth measured on the same arrays in the same run:
the weighted sum reads x and writes 1/N of it, so reading bounds it. The op's times are
also given in passes: time / (bytes of x / copy bandwidth); the pooled op needs 2 passes
forward and 4 forward+backward.

`--scaling` times the pooled op from 64 to 512 pixels and 2x2 to 32x32 grids (and
overlapping windows of stride half the region at the same N), each figure as ns per
element of x: the table of no cliff at many regions.

  GLIBC_TUNABLES=$(python -m experiments.timing) \
    python -m experiments.benchmark_region_op            # full sizes (~1 min)
  python -m experiments.benchmark_region_op --scaling    # the scaling table
  python -m experiments.benchmark_region_op --quick      # tiny sizes, seconds (CI)
  python -m experiments.benchmark_region_op --profile    # per HLO instruction

(`python -m experiments.timing` prints the tuned allocator setting of every benchmark.)
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments import hlo_profile
from experiments import timing
import regionatt_jax as ra

FULL_CASES = [((32, 64, 64, 64), (4, 4)), ((128, 64, 64, 64), (4, 4)),
              ((128, 64, 64, 64), (8, 8))]
QUICK_CASES = [((4, 16, 16, 8), (4, 4))]
SCALING_SIDES, SCALING_GRIDS = (64, 128, 256, 512), (2, 4, 8, 16, 32)
SCALING_BATCH, SCALING_CHANNELS = 8, 16
MAX_SCALING_REGIONS = 1024  # windows at stride half the region: (2g - 1)^2 of them


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
  """A 2-layer MLP on region means: `(..., N, C) -> (..., N)`."""
  def score_fn(pooled):
    return (jax.nn.relu(pooled @ params["w1"]) @ params["w2"])[..., 0]
  return score_fn


def op_forms(params, **layout):
  """`region_attention` with the MLP scorer: `pooled` (means read in place) and `regions`."""
  score = mlp_scorer(params)
  return {
      "pooled": lambda x: ra.region_attention(x, score, pool="mean", **layout)[0],
      "regions": lambda x: ra.region_attention(
          x, lambda r: score(r.mean(axis=(-3, -2))), **layout)[0],
  }


def jitted_op(forward, params, x, cotangent="fixed"):
  """`(fwd, fwd_bwd, args)`: `forward(params)(x)` jitted, and its value and gradient
  w.r.t. the parameters and x jitted, called as `fwd(*args[:2])`, `fwd_bwd(*args)`.

  `cotangent`: the output's gradient: `"fixed"` (a random array, as a model's next layer
  gives: the op's own cost) or `"square"` (of `sum(y ** 2)`: it depends on `y`
  elementwise, which lets XLA fuse the forward sum into the backward's loops).
  """
  fwd = jax.jit(lambda params, x: forward(params)(x))
  shape = jax.eval_shape(fwd, params, x)
  # An argument, not a closed-over array, which jit would embed as a constant.
  fixed = jax.random.normal(jax.random.key(7), shape.shape, shape.dtype)
  loss = {"fixed": lambda y, fixed: jnp.sum(y * fixed),
          "square": lambda y, _: jnp.sum(y ** 2)}[cotangent]
  fwd_bwd = jax.jit(jax.value_and_grad(
      lambda params, x, fixed: loss(forward(params)(x), fixed), argnums=(0, 1)))
  return fwd, fwd_bwd, (params, x, fixed)


def time_op(forward, params_and_x, repeats, cotangent="fixed"):
  """`(forward ms, forward+backward ms, compile s of forward+backward)` of `forward(x)`
  (`jitted_op`)."""
  fwd, fwd_bwd, args = jitted_op(forward, *params_and_x, cotangent)
  compile_s = compile_seconds(fwd_bwd, *args)
  return (median_seconds(fwd, *args[:2], repeats=repeats) * 1e3,
          median_seconds(fwd_bwd, *args, repeats=repeats) * 1e3, compile_s)


def profile_case(shape, grid, repeats, cotangent="fixed"):
  """Prints where the pooled op's forward+backward spends its time on `x` of `shape`:
  per HLO instruction, time, bytes and passes (`experiments.hlo_profile`)."""
  key_x, key_p = jax.random.split(jax.random.key(0))
  x = jax.random.normal(key_x, shape, jnp.float32)
  pass_ms = x.nbytes / (copy_bandwidth(x, repeats) * 1e9) * 1e3
  _, fwd_bwd, args = jitted_op(lambda p: op_forms(p, grid=grid)["pooled"],
                               random_params(key_p, shape[-1]), x, cotangent)
  total_ms = median_seconds(fwd_bwd, *args, repeats=repeats) * 1e3
  rows = hlo_profile.profile(fwd_bwd, *args, calls=repeats)
  print(f"x {shape} ({x.nbytes / 2**20:.0f} MiB), grid {grid}, cotangent {cotangent}: "
        f"fwd+bwd {total_ms:.2f} ms = {total_ms / pass_ms:.1f} passes "
        f"(one pass {pass_ms:.2f} ms)")
  print("\n".join(hlo_profile.format_profile(rows, total_ms, pass_ms)), flush=True)
  return {"shape": shape, "grid": grid, "cotangent": cotangent, "pass_ms": pass_ms,
          "fwd_bwd_ms": total_ms, "instructions": rows}


def random_params(key, channels):
  key_1, key_2 = jax.random.split(key)
  return {"w1": jax.random.normal(key_1, (channels, 32)) / np.sqrt(channels),
          "w2": jax.random.normal(key_2, (32, 1)) / np.sqrt(32)}


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


def run_case(shape, grid, repeats, cotangent="fixed"):
  key_x, key_a, key_p = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(key_x, shape, jnp.float32)
  n = grid[0] * grid[1]
  a = jax.nn.softmax(jax.random.normal(key_a, (shape[0], n)))
  params = random_params(key_p, shape[-1])
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

  pass_ms = x_bytes / (row["copy_GBps"] * 1e9) * 1e3  # one pass over x at copy speed
  row["pass_ms"] = pass_ms
  for form in ("pooled", "regions"):
    fwd_ms, fwd_bwd_ms, compile_s = time_op(lambda p, form=form: op_forms(p, grid=grid)[form],
                                            (params, x), repeats, cotangent)
    row[f"op_{form}_fwd_ms"], row[f"op_{form}_fwd_bwd_ms"] = fwd_ms, fwd_bwd_ms
    row[f"op_{form}_fwd_bwd_compile_s"] = compile_s
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
  for form in ("pooled", "regions"):
    fwd, fwd_bwd = row[f"op_{form}_fwd_ms"], row[f"op_{form}_fwd_bwd_ms"]
    lines.append(
        f"  region_attention [{form:7s}] fwd {fwd:8.2f} ms = {fwd / row['pass_ms']:4.1f} passes, "
        f"fwd+bwd {fwd_bwd:8.2f} ms = {fwd_bwd / row['pass_ms']:4.1f} passes "
        f"(compile {row[f'op_{form}_fwd_bwd_compile_s']:.2f} s)")
  lines.append(
      f"  library vs einsum {row['sum_einsum_ms'] / row['sum_library_ms']:.1f}x faster, "
      f"vs reduce {row['sum_reduce_ms'] / row['sum_library_ms']:.1f}x faster")
  return "\n".join(lines)


def scaling_rows(repeats, sides=SCALING_SIDES, grids=SCALING_GRIDS, cotangent="fixed"):
  """The pooled op per image side and grid (and windows at stride half the region, up
  to `MAX_SCALING_REGIONS`)."""
  rows = []
  for side in sides:
    key_x, key_p = jax.random.split(jax.random.key(side))
    x = jax.random.normal(key_x, (SCALING_BATCH, side, side, SCALING_CHANNELS))
    params = random_params(key_p, SCALING_CHANNELS)
    pass_ms = x.nbytes / (copy_bandwidth(x, repeats) * 1e9) * 1e3
    for g in grids:
      if side // g < 2:
        continue
      region = side // g
      layouts = {"grid": dict(grid=(g, g)),
                 "windows": dict(size=(region, region), stride=(region // 2, region // 2))}
      for name, layout in layouts.items():
        n = ra.region_layout((side, side), **layout).num_regions
        if n > MAX_SCALING_REGIONS:
          continue
        fwd_ms, fwd_bwd_ms, compile_s = time_op(
            lambda p, layout=layout: op_forms(p, **layout)["pooled"], (params, x), repeats,
            cotangent)
        rows.append(dict(side=side, grid=g, layout=name, regions=n, pass_ms=pass_ms,
                         fwd_ns=fwd_ms * 1e6 / x.size, fwd_bwd_ns=fwd_bwd_ms * 1e6 / x.size,
                         fwd_passes=fwd_ms / pass_ms, fwd_bwd_passes=fwd_bwd_ms / pass_ms,
                         compile_s=compile_s))
        print(f"  {side:4d} px, {name:7s} {n:5d} regions: fwd {rows[-1]['fwd_ns']:.3f} ns/elem "
              f"({rows[-1]['fwd_passes']:.1f} passes), fwd+bwd {rows[-1]['fwd_bwd_ns']:.3f} "
              f"ns/elem ({rows[-1]['fwd_bwd_passes']:.1f} passes), compile {compile_s:.2f} s",
              flush=True)
  return rows


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="tiny sizes, for CI")
  parser.add_argument("--scaling", action="store_true",
                      help="the pooled op from 64 to 512 px, 2x2 to 32x32 regions")
  parser.add_argument("--repeats", type=int, default=None, help="timed runs per figure")
  parser.add_argument("--json", default=None, help="also write the rows to this file")
  parser.add_argument("--cotangent", choices=("fixed", "square"), default="fixed",
                      help="the output's gradient in forward+backward (see `jitted_op`)")
  parser.add_argument("--profile", action="store_true",
                      help="per HLO instruction of the pooled op's forward+backward: "
                           "time, bytes, passes")
  args = parser.parse_args(argv)
  cases = QUICK_CASES if args.quick else FULL_CASES
  repeats = args.repeats or (3 if args.quick else 21)
  env = timing.environment({"jax": jax.__version__})
  allocator = os.environ.get("GLIBC_TUNABLES")
  print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, {env['cpu']}, "
        f"{env['cores']} cores, allocator "
        f"{'tuned' if allocator == timing.TUNED_ALLOCATOR else allocator or 'default'}, "
        f"medians of {repeats}")
  if args.scaling:
    rows = scaling_rows(repeats, cotangent=args.cotangent,
                        **(dict(sides=(16,), grids=(2, 4)) if args.quick else {}))
    if args.json:
      with open(args.json, "w") as f:
        json.dump(rows, f, indent=1)
    return rows
  rows = []
  for shape, grid in cases:
    if args.profile:
      rows.append(profile_case(shape, grid, repeats, args.cotangent))
      continue
    rows.append(run_case(shape, grid, repeats, args.cotangent))
    print(format_row(rows[-1]), flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  return rows


if __name__ == "__main__":
  main()
