r"""The forms tried for a 3x3 convolution in JAX, against torch: the study behind
`regionatt_jax.nn.conv.Conv` (section 3 of BENCHMARKS.md).

A 64->128 3x3 SAME convolution on `(32, 64, 64, 64)` NHWC float32: XLA's convolution in
both layouts, 9 per-tap matmuls, patches + one matmul, for the forward pass, the input
gradient and the weight gradient; forward + both gradients with the native VJP and with
`conv2d` in float32 and bfloat16; torch's `Conv2d` in NCHW and channels-last. JAX and
torch each run in their own subprocess, timed as in `experiments/benchmark.py`.

    python -m experiments.benchmark_conv --allocators tuned   # ~5 min on 2 cores
    python -m experiments.benchmark_conv --quick              # tiny sizes (CI)
    python -m experiments.benchmark_conv --from-json benchmarks/results_conv.json
"""

import argparse
import json

import numpy as np

from experiments import timing

SIZES = {
    "full": dict(image=64, channels=64, batch_sizes=(32,), warmup=3, iters=10),
    "quick": dict(image=16, channels=16, batch_sizes=(2,), warmup=1, iters=3),
}
MARKER = "_conv"  # names the results file and the BENCHMARKS.md section


def jax_rows(batch: int, size: dict) -> list[dict]:
  """The forms tried for a 3x3 convolution's forward, input and weight gradients."""
  # pylint: disable=g-import-not-at-top  (the torch worker must not load JAX)
  import jax
  import jax.numpy as jnp
  from jax import lax
  from regionatt_jax.nn.conv import conv2d
  hw, cin, cout = size["image"], size["channels"], 2 * size["channels"]
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
    compiled, compile_times = timing.jax_timed_compile(fn, *args)
    rows.append(dict(kind=kind, **compile_times,
                     **timing.median_ms(lambda: jax.block_until_ready(compiled(*args)),
                                  size["warmup"], size["iters"])))
  return rows




def torch_rows(batch: int, size: dict) -> list[dict]:
  """torch's Conv2d forward, and forward + both gradients, NCHW and channels-last."""
  import torch  # pylint: disable=g-import-not-at-top  (the JAX worker must not load torch)
  hw, cin, cout = size["image"], size["channels"], 2 * size["channels"]
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
                       **timing.median_ms(fn, size["warmup"], size["iters"])))
  return rows



def conv_table(results: dict, allocator: str) -> list[str]:
  rows = [r for r in results["rows"] if r["allocator"] == allocator and r["case"] == "conv"]
  lines = ["| framework | form | batch | median ms | p25-p75 ms |", "|---|---|---|---|---|"]
  for r in rows:
    lines.append(f"| {r['framework']} | {r['kind']} | {r['batch']} | {r['median_ms']:.1f} | "
                 f"{r['p25_ms']:.1f}-{r['p75_ms']:.1f} |")
  return lines




def run_worker(spec: dict) -> dict:
  """Measures every form of `spec["framework"]` ("jax" or "torch_eager") in this process."""
  rows_of = jax_rows if spec["framework"] == "jax" else torch_rows
  size = spec["size"]
  return timing.worker_result(spec["framework"], spec["threads"], lambda: [
      dict(framework=spec["framework"], case="conv", batch=batch, **row)
      for batch in size["batch_sizes"] for row in rows_of(batch, size)])


def markdown(results: dict) -> str:
  """The convolution section of BENCHMARKS.md."""
  return timing.markdown_section(results, ["Times are medians of steady-state runs."],
                                 conv_table)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  timing.add_flags(parser, f"results{MARKER}.json")
  parser.add_argument("--allocators", nargs="+", choices=tuple(timing.ALLOCATORS),
                      default=["tuned"])
  args = parser.parse_args(argv)
  if args.worker:
    print(json.dumps(run_worker(json.loads(args.worker))))
  elif args.from_json:
    timing.write_markdown(timing.markdown_path(args),
                          markdown(json.loads(args.from_json.read_text())), marker=MARKER)
  else:
    results = timing.run_suite("experiments.benchmark_conv", "conv",
                               [("jax", "conv"), ("torch_eager", "conv")],
                               SIZES["quick" if args.quick else "full"], args.allocators,
                               args.threads, args.timeout, args.rounds)
    timing.save_results(args, results, markdown(results), MARKER)


if __name__ == "__main__":
  main()
