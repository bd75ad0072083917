"""The default model's train step and predict function, lowered for cpu, cuda and tpu.

`jax.export` lowers for any platform on a CPU-only machine, so these tests check what
GPU and TPU compilers would receive: the native convolution gradients (no per-tap loop),
XLA's reduction for the region sum, and nothing that only a CPU host can run.
"""

import functools
import re

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import export

import regionatt_jax as ra
from experiments.configs import default
from regionatt_jax import train
from regionatt_jax import nn as rn
from regionatt_jax.nn import conv as conv_lib

ACCELERATORS = ("cuda", "tpu")
PLATFORMS = ("cpu",) + ACCELERATORS
# Tiny, but deep enough for the four stages and the 4x4 head of the default model.
INPUT_SHAPE = (2, 32, 32, 1)


@functools.cache
def _default_state():
  config = default.get_config()
  model = rn.build_model(config.model, num_classes=10)
  state = train.create_train_state(config, model, jax.random.PRNGKey(0), INPUT_SHAPE)
  batch = {"image": jnp.zeros(INPUT_SHAPE), "label": jnp.zeros(INPUT_SHAPE[:1], jnp.int32)}
  return model, state, batch


@functools.cache
def _module(function: str, platforms: tuple[str, ...], conv: str = "regionatt") -> str:
  """StableHLO text of the default model's `function` exported for `platforms`."""
  model, state, batch = _default_state()
  if conv == "flax":  # Same parameters, `flax.linen.Conv` layers: the native reference.
    state = state.replace(apply_fn=model.clone(conv=nn.Conv).apply)
  fn = {"train_step": train.train_step, "predict": train.predict}[function]
  exported = export.export(jax.jit(fn), platforms=platforms)(state, batch)
  assert exported.platforms == platforms
  return exported.mlir_module()


def _count(text: str, op: str) -> int:
  return len(re.findall(rf"\bstablehlo\.{op}\b", text))


def _per_tap_convs(params) -> int:
  """Kernels whose weight gradient `conv.conv2d` computes per tap on CPU."""
  kernels = [leaf.shape for path, leaf in jax.tree_util.tree_leaves_with_path(params)
             if jax.tree_util.keystr(path).endswith("['kernel']") and leaf.ndim == 4]
  return sum(kh * kw > 1 and min(cin, cout) >= conv_lib._PER_TAP_MIN_CHANNELS  # pylint: disable=protected-access
             for kh, kw, cin, cout in kernels)


@pytest.mark.parametrize("platform", ACCELERATORS)
def test_accelerator_train_step_has_native_conv_gradients(platform):
  text = _module("train_step", (platform,))
  native = _module("train_step", (platform,), conv="flax")
  assert _count(text, "while") == 0
  # Forward, input gradient and weight gradient of every 3x3 conv, as flax.linen.Conv.
  assert _count(text, "convolution") == _count(native, "convolution") > 0


def test_cpu_train_step_keeps_the_per_tap_weight_gradient():
  _, state, _ = _default_state()
  expected = _per_tap_convs(state.params)
  assert expected > 0
  assert _count(_module("train_step", ("cpu",)), "while") == expected
  # The other convolutions keep XLA's, so the CPU step has fewer than flax.linen.Conv's.
  assert (_count(_module("train_step", ("cpu",)), "convolution")
          == _count(_module("train_step", ("cpu",), conv="flax"), "convolution") - expected)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_region_sum_is_unrolled_on_cpu_only(platform):
  grid = (4, 4)
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  fn = jax.jit(lambda x: ra.region_attention(x, ra.per_region(jnp.mean), grid=grid)[0])
  text = export.export(fn, platforms=(platform,))(x).mlir_module()
  # The unrolled sum slices out each of the N regions; XLA's reduction slices nothing.
  slices = _count(text, "slice")
  if platform == "cpu":
    assert slices >= np.prod(grid)
  else:
    assert slices == 0 and _count(text, "reduce") > 0


@pytest.mark.parametrize("platform", PLATFORMS)
def test_region_means_reduce_rows_first_on_cpu_only(platform):
  x = jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32)
  score = lambda pooled: pooled.sum(-1)
  fn = jax.jit(lambda x: ra.region_attention(x, score, grid=(4, 4), pool="mean")[0])
  text = export.export(fn, platforms=(platform,))(x).mlir_module()
  # The pooling reduces the blocks (2, 4, 2, 4, 2, 3) over their pixel axes, 2 and 4.
  both_axes = re.findall(r"across dimensions = \[2, 4\] : \(tensor<2x4x2x4x2x3xf32>", text)
  rows_first = re.findall(r"across dimensions = \[2\] : \(tensor<2x4x2x4x2x3xf32>", text)
  assert (len(both_axes), len(rows_first)) == ((0, 1) if platform == "cpu" else (1, 0))


@pytest.mark.parametrize("function", ["train_step", "predict"])
@pytest.mark.parametrize("platforms", [(p,) for p in PLATFORMS] + [PLATFORMS])
def test_nothing_is_cpu_only(function, platforms):
  # Host callbacks and platform kernels (LAPACK, cuSOLVER, ...) are custom calls; the
  # modules hold none but sharding annotations, so every platform compiles them alone.
  text = _module(function, platforms)
  targets = set(re.findall(r"stablehlo\.custom_call @(\w+)", text))
  targets |= set(re.findall(r'call_target_name = "(\w+)"', text))
  assert targets <= {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape"}, targets


def test_multi_platform_module_compiles_to_the_form_of_this_backend():
  # Lowered for several platforms, both forms sit behind a case on the platform index;
  # the caller resolves it before compiling, so XLA:CPU gets only the per-tap loops and
  # XLA:GPU / TPU only the native gradients (run on an accelerator, this checks that).
  _, state, batch = _default_state()
  text = _module("train_step", PLATFORMS)
  assert _count(text, "case") > 0 and _count(text, "while") == _per_tap_convs(state.params)
  exported = export.export(jax.jit(train.train_step), platforms=PLATFORMS)(state, batch)
  compiled = jax.jit(exported.call).lower(state, batch).compile().as_text()
  expected = _per_tap_convs(state.params) if jax.default_backend() == "cpu" else 0
  assert " conditional(" not in compiled
  assert len(re.findall(r" while\(", compiled)) == expected
