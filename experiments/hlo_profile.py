r"""Where a jitted function's time goes: per HLO instruction, its time and its bytes.

XLA:CPU runs a compiled program as a sequence of thunks, one per instruction of the
entry computation (a fusion, a dot, a custom call), and the profiler records each
(`jax.profiler.trace`). `profile` times `fn(*args)` under the profiler, takes each
thunk's median duration over the calls, and puts beside it the bytes of the
instruction's operands and outputs, read from the optimized HLO: the profile that says
which op, how many bytes and how long.

Operand bytes are an upper bound of what an instruction reads: a fusion that slices an
operand reads only the slice. Thunks of one call may overlap (XLA runs independent ones
concurrently), so their times can add up to more than the call's.

    python -m experiments.benchmark_region_op --profile   # the region op at 128 MiB
"""

from __future__ import annotations

import collections
import gzip
import json
import math
import pathlib
import re
import tempfile
from typing import Any, Callable, Sequence

import jax
import numpy as np

#: Instructions that run no thunk: views, constants, the entry's inputs and outputs.
_FREE = {"parameter", "constant", "bitcast", "tuple", "get-tuple-element"}
_DTYPE_BYTES = {"pred": 1, "s8": 1, "u8": 1, "bf16": 2, "f16": 2, "s16": 2, "u16": 2,
                "f32": 4, "s32": 4, "u32": 4, "f64": 8, "s64": 8, "u64": 8, "c64": 8,
                "c128": 16}
_ARRAY = re.compile(r"\b(" + "|".join(_DTYPE_BYTES) + r")\[([0-9,]*)\]")
# `%name = TYPE opcode(operands)...`; TYPE is an array or a tuple of arrays.
_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%(?P<name>[\w.\-]+)\s*=\s*(?P<type>\([^=]*?\)|\S+)\s+"
    r"(?P<opcode>[\w\-]+)\((?P<operands>[^)]*)\)")


def type_bytes(hlo_type: str) -> int:
  """Bytes of an HLO type: an array `f32[2,3]{1,0}` or a tuple of arrays."""
  return sum(_DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(",") if d)
             for dtype, dims in _ARRAY.findall(hlo_type))


def entry_instructions(hlo_text: str) -> dict[str, dict[str, Any]]:
  """The instructions of the entry computation of an HLO module's text.

  Returns:
    name -> `opcode`, `kind` (a fusion's kind, e.g. `kLoop`, else the opcode),
    `out_bytes` and `in_bytes` (the sum over its operands; a bound, see the module
    docstring), for every instruction but views, constants and the parameters.
  """
  lines = hlo_text[hlo_text.index("\nENTRY"):].split("\n")[1:]
  sizes, found = {}, {}
  for line in lines:
    if line.strip() == "}":
      break
    match = _INSTRUCTION.match(line)
    if match is None:
      continue
    name, opcode = match["name"], match["opcode"]
    sizes[name] = type_bytes(match["type"])
    if opcode in _FREE:
      continue
    operands = re.findall(r"%([\w.\-]+)", match["operands"])
    kind = re.search(r"kind=(\w+)", line)
    found[name] = {"opcode": opcode, "kind": kind[1] if kind else opcode,
                   "out_bytes": sizes[name],
                   "in_bytes": sum(sizes.get(operand, 0) for operand in operands)}
  return found


def thunk_durations(fn: Callable[..., Any], args: Sequence[Any], calls: int
                    ) -> dict[str, list[float]]:
  """Durations (ms) of each named profiler event over `calls` calls of `fn(*args)`."""
  jax.block_until_ready(fn(*args))  # warm before tracing
  with tempfile.TemporaryDirectory() as directory:
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      for _ in range(calls):
        jax.block_until_ready(fn(*args))
    [path] = pathlib.Path(directory).rglob("perfetto_trace.json.gz")
    with gzip.open(path) as f:
      trace = json.load(f)
  events = trace["traceEvents"] if isinstance(trace, dict) else trace
  durations = collections.defaultdict(list)
  for event in events:
    if event.get("ph") == "X" and "dur" in event:
      durations[event["name"]].append(event["dur"] / 1e3)
  return durations


def profile(fn: Callable[..., Any], *args: Any, calls: int = 5) -> list[dict[str, Any]]:
  """Per instruction of jitted `fn`'s entry computation: its median time and bytes.

  Args:
    fn: a `jax.jit`-wrapped function.
    *args: its arguments.
    calls: traced calls; each instruction's time is its median over them.

  Returns:
    One row per instruction that ran, slowest first: `name`, `opcode`, `kind`,
    `in_bytes`, `out_bytes`, `ms` (median duration), `runs` (events found; `calls`
    unless the instruction runs more than once a call).
  """
  # One executable both read and timed: its instruction names are the events' names.
  compiled = fn.lower(*args).compile()
  instructions = entry_instructions(compiled.as_text())
  durations = thunk_durations(compiled, args, calls)
  rows = [{"name": name, **info, "ms": float(np.median(durations[name])),
           "runs": len(durations[name])}
          for name, info in instructions.items() if durations.get(name)]
  return sorted(rows, key=lambda row: -row["ms"])


def format_profile(rows: Sequence[dict[str, Any]], total_ms: float, pass_ms: float,
                   top: int = 12) -> list[str]:
  """A table of the `top` slowest rows: time, share of `total_ms`, bytes, and the time
  in passes (`pass_ms`: one read and one write of the op's input at copy speed)."""
  lines = [f"{'instruction':34s} {'kind':10s} {'ms':>7s} {'share':>6s} {'passes':>6s} "
           f"{'in MB':>8s} {'out MB':>8s}"]
  for row in rows[:top]:
    lines.append(f"{row['name'][:34]:34s} {row['kind'][:10]:10s} {row['ms']:7.2f} "
                 f"{row['ms'] / total_ms:6.1%} {row['ms'] / pass_ms:6.2f} "
                 f"{row['in_bytes'] / 2**20:8.1f} {row['out_bytes'] / 2**20:8.1f}")
  rest = rows[top:]
  if rest:
    lines.append(f"{len(rest)} more instructions: {sum(r['ms'] for r in rest):.2f} ms")
  lines.append(f"sum of instructions {sum(r['ms'] for r in rows):.2f} ms; the call "
               f"{total_ms:.2f} ms (instructions may overlap)")
  return lines
