"""What the fuzz test modules share: hypothesis settings, case counts, message checks."""

import collections
import json
import os
import re

import hypothesis


def settings(examples: int) -> hypothesis.settings:
  """`examples` cases per property, reproducible unless `REGIONATT_FUZZ_RANDOM` is set."""
  return hypothesis.settings(
      max_examples=examples, deadline=None, database=None,
      derandomize=not os.environ.get("REGIONATT_FUZZ_RANDOM"),
      suppress_health_check=list(hypothesis.HealthCheck))


def names_in(message: str, names) -> bool:
  """Whether `message` names one of `names` as a word (not inside another name)."""
  return any(re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", message) for name in names)


def report(counts: collections.Counter, what: str, suffix: str = "") -> None:
  """Prints the `(target, outcome)` case counts, and writes them to
  `$REGIONATT_FUZZ_REPORT` + `suffix` when that is set."""
  total = sum(counts.values())
  table = {f"{target}/{outcome}": n for (target, outcome), n in sorted(counts.items())}
  print(f"\n{what} cases run: {total} {json.dumps(table)}")
  if os.environ.get("REGIONATT_FUZZ_REPORT"):
    with open(os.environ["REGIONATT_FUZZ_REPORT"] + suffix, "w") as f:
      json.dump({"total": total, "cases": table}, f, indent=2)
