"""Importing the library pulls in neither torch nor tensorflow (docs/design.md)."""

import subprocess
import sys

import pytest


@pytest.mark.parametrize("module", ["regionatt_jax", "regionatt_jax.nn", "regionatt_jax.data",
                                    "regionatt_jax.train", "regionatt_jax.train.inference"])
def test_import_is_light(module):
  code = (f"import sys, {module}; "
          "print(','.join(m for m in ('torch', 'tensorflow') if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, timeout=120)
  assert out.stdout.strip() == "", f"import {module} imported {out.stdout.strip()}"


def test_bottom_layer_imports_no_framework():
  code = ("import sys, regionatt_jax; "
          "print(','.join(m for m in ('flax', 'optax', 'orbax', 'tensorflow_datasets') "
          "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, timeout=120)
  assert out.stdout.strip() == "", f"import regionatt_jax imported {out.stdout.strip()}"
