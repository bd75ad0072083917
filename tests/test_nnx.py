"""The NNX twins compute what their Linen modules compute: outputs, BatchNorm statistics,
parameter gradients and sown maps of `from_linen(m, v)` against `m.apply(v, ...)`, plus
the round trip `to_linen_variables` and the NNX-only API (eager build, train step)."""

import functools
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import regionatt_jax.nn as rn
import regionatt_jax.nnx as rx

# name -> (Linen module, input shape, call kwargs). Scorers and pooling take no `train`;
# a BatchNorm model is compared in eval and in train mode.
_SCORER_INPUT = (2, 4, 3, 3, 5)
_FEATURES = (2, 8, 8, 8)
_IMAGES = (2, 8, 8, 3)

CASES = {
    "attention_score": (rn.AttentionScore(hidden=4, gated=True), (2, 5, 6), {}),
    "mlp_scorer": (rn.MLPScorer(hidden=(4, 3), pool="meanmax"), _SCORER_INPUT, {}),
    "gated_scorer": (rn.GatedScorer(hidden=4), _SCORER_INPUT, {}),
    "conv_scorer": (rn.ConvScorer(features=(4,)), _SCORER_INPUT, {}),
    "gru_bidirectional": (rn.RecurrentScorer(hidden=4, bidirectional=True), _SCORER_INPUT, {}),
    "lstm_meanmax": (rn.RecurrentScorer(hidden=4, cell="lstm", pool="meanmax"),
                     _SCORER_INPUT, {}),
    "self_attention": (rn.SelfAttentionScorer(embed_dim=8, num_heads=2), _SCORER_INPUT, {}),
    "region_conv_scorer": (rn.RegionAttention(grid=(2, 2), scorer=rn.ConvScorer(features=(4,))),
                           _FEATURES, {"train": False}),
    "region_windows_sparsemax": (rn.RegionAttention(
        size=(4, 4), stride=(2, 2), normalize="sparsemax", aggregate="reassemble",
        temperature=0.5), _FEATURES, {"train": False}),
    "multiscale_parallel": (rn.MultiScaleRegionAttention(
        grids=((1, 1), (2, 2)), scorer=functools.partial(rn.GatedScorer, hidden=4)),
                            _FEATURES, {"train": False}),
    "multiscale_coarse_to_fine": (rn.MultiScaleRegionAttention(
        grids=((1, 1), (2, 2), (4, 4)), mode="coarse_to_fine"), _FEATURES, {"train": False}),
    "pooling_gated": (rn.AttentionPooling("gated", hidden=4), (2, 5, 6), {}),
    "pooling_max_masked": (rn.AttentionPooling("max"), (2, 5, 6),
                           {"mask": jnp.array([[True] * 3 + [False] * 2] * 2)}),
    "se": (rn.SqueezeExcite(reduction=2), _FEATURES, {"train": False}),
    "eca": (rn.EfficientChannelAttention(), _FEATURES, {"train": False}),
    "spatial": (rn.SpatialAttention(kernel_size=3), _FEATURES, {"train": False}),
    "cbam": (rn.CBAM(reduction=2, kernel_size=3), _FEATURES, {"train": False}),
    "coordinate": (rn.CoordinateAttention(reduction=2, min_hidden=2), _FEATURES,
                   {"train": True}),
    "attention_net": (rn.AttentionNet(3, features=(4, 8)), _IMAGES, {"train": False}),
    "small_cnn_cbam_region_gated": (rn.RegionAttentionClassifier(
        3, backbone_kwargs={"features": (4, 8)}, attention="cbam",
        attention_kwargs={"reduction": 2, "kernel_size": 3},
        head_kwargs={"grid": (2, 2), "scorer": "gated"}), _IMAGES, {"train": True}),
    "resnet18_coordinate_multiscale": (rn.RegionAttentionClassifier(
        3, backbone="resnet18", backbone_kwargs={"width": 4, "stage_sizes": (1, 1)},
        attention="coordinate", attention_kwargs={"reduction": 2, "min_hidden": 2},
        head="multiscale", head_kwargs={"grids": ((1, 1), (2, 2))}), _IMAGES, {"train": True}),
    "resnet18_imagenet_stem_eca": (rn.RegionAttentionClassifier(
        3, backbone="resnet18", backbone_kwargs={"width": 2, "stage_sizes": (1, 1),
                                                 "stem": "imagenet"},
        attention="eca", head_kwargs={"grid": (2, 2)}), (2, 16, 16, 3), {"train": True}),
    "resnet50_bottleneck_se": (rn.RegionAttentionClassifier(
        3, backbone="resnet50", backbone_kwargs={"width": 2, "stage_sizes": (1, 1)},
        attention="se", attention_kwargs={"reduction": 2}, head_kwargs={"grid": (2, 2)}),
                               _IMAGES, {"train": True}),
    "small_cnn_residual": (rn.SmallCNN(features=(4, 4, 8), placement="residual"), _IMAGES,
                           {"train": True}),
    "small_cnn_residual_cbam": (rn.SmallCNN(
        features=(4, 4, 8), placement="residual", attention="cbam",
        attention_kwargs={"reduction": 2, "kernel_size": 3}), _IMAGES, {"train": True}),
    "small_cnn_residual_se_region": (rn.RegionAttentionClassifier(
        3, backbone_kwargs={"features": (4, 8), "placement": "residual"}, attention="se",
        attention_kwargs={"reduction": 2}, head_kwargs={"grid": (2, 2)}), _IMAGES,
                                     {"train": True}),
    "mil_masked": (rn.MILClassifier(2, features=(4,), embed_dim=6, hidden=4), (2, 3, 8, 8, 1),
                   {"train": False, "mask": jnp.array([[True, True, False], [True] * 3])}),
}

# ResNet-34 is ResNet with other stage sizes; its full depth takes minutes to compile here.
SLOW_CASES = {
    "resnet34": (rn.RegionAttentionClassifier(3, backbone="resnet34",
                                              backbone_kwargs={"width": 2}, head=None),
                 (2, 8, 8, 3), {"train": True}),
}


def _input(shape, seed=1):
  return jax.random.normal(jax.random.key(seed), shape)


def _assert_close(actual, expected, atol, what):
  jax.tree.map(lambda a, e: np.testing.assert_allclose(np.asarray(a), np.asarray(e), atol=atol,
                                                       rtol=0, err_msg=what),
               actual, expected)


def _perturbed(variables):
  """`variables` with noise on every parameter: the twins are compared away from the
  initial values, where a zero-initialized scale (the last BatchNorm of a residual
  block) would zero the attention on the branch and its gradients."""
  leaves, treedef = jax.tree.flatten(variables.get("params", {}))
  keys = jax.random.split(jax.random.key(3), len(leaves))
  noisy = [p + 0.5 * jax.random.normal(k, p.shape, p.dtype) for p, k in zip(leaves, keys)]
  return {**variables, **({"params": jax.tree.unflatten(treedef, noisy)} if leaves else {})}


def _modes(variables):
  """The values of `train` to compare: eval and train mode where BatchNorm tells them apart."""
  return (False, True) if "batch_stats" in variables else (None,)


def _call_kwargs(kwargs, train):
  return kwargs if train is None else {**kwargs, "train": train}


def _linen_results(module, variables, x, kwargs, cotangent):
  """Per mode: outputs, intermediates and batch statistics; and the parameter gradients
  of `sum(outputs * cotangent)` in the last mode. One jit, to compile once."""

  @jax.jit
  def run(variables, x, cotangent):
    results = {}
    for train in _modes(variables):
      out, state = module.apply(variables, x, mutable=["intermediates", "batch_stats"],
                                **_call_kwargs(kwargs, train))
      results[train] = (out, state.get("intermediates", {}), state.get("batch_stats"))

    def loss(params):
      out, _ = module.apply({**variables, "params": params}, x, mutable=["batch_stats"],
                            **_call_kwargs(kwargs, train))
      return jnp.sum(out * cotangent)

    return results, jax.grad(loss)(variables["params"]) if "params" in variables else {}

  return run(variables, x, cotangent)


def _nnx_results(model, x, kwargs, cotangent):
  """`_linen_results` of an NNX model: `nnx.capture` for the maps, `nnx.grad`."""
  graphdef, state = nnx.split(model)

  @jax.jit
  def run(state, x, cotangent):
    results = {}
    for train in _modes(rx.to_linen_variables(model)):
      m = nnx.merge(graphdef, state)  # each mode starts from the given statistics
      out, sown = nnx.capture(m, nnx.Intermediate)(x, **_call_kwargs(kwargs, train))
      results[train] = (out, rx.intermediates(sown),
                        rx.to_linen_variables(m).get("batch_stats"))
    grads = nnx.grad(lambda m: jnp.sum(m(x, **_call_kwargs(kwargs, train)) * cotangent))(
        nnx.merge(graphdef, state))
    return results, grads.to_pure_dict()

  return run(state, x, cotangent)


@pytest.mark.parametrize(
    "case", [pytest.param(case, id=name) for name, case in sorted(CASES.items())]
    + [pytest.param(case, id=name, marks=pytest.mark.slow) for name, case in SLOW_CASES.items()])
def test_twin_matches_linen(case):
  """Outputs and sown maps (eval and train mode), BatchNorm statistics after a train-mode
  call, parameter gradients, and the variables' round trip of `from_linen(m, v)` against
  `m.apply(v, ...)`."""
  module, shape, kwargs = case
  x = _input(shape)
  variables = _perturbed(jax.jit(functools.partial(module.init, **kwargs))(jax.random.key(0),
                                                                           x))
  model = rx.from_linen(module, variables)
  _assert_close(rx.to_linen_variables(model), dict(variables), 0, "variables round trip")
  out_shape = jax.eval_shape(
      lambda: module.apply(variables, x, mutable=["batch_stats"], **kwargs)[0]).shape
  cotangent = _input(out_shape, seed=2)
  expected, expected_grads = _linen_results(module, variables, x, kwargs, cotangent)
  results, grads = _nnx_results(model, x, kwargs, cotangent)
  assert results.keys() == expected.keys()
  for train, (out, sown, batch_stats) in results.items():
    _assert_close(out, expected[train][0], 1e-6, f"outputs, train={train}")
    _assert_close(sown, expected[train][1], 1e-6, f"sown maps, train={train}")
    if train:
      _assert_close(batch_stats, expected[train][2], 1e-6, "batch_stats after a train call")
  _assert_close(grads, expected_grads, 1e-5, "parameter gradients")


def test_classes_are_native_nnx_modules():
  names = ["AttentionScore", "MLPScorer", "GatedScorer", "ConvScorer", "RecurrentScorer",
           "SelfAttentionScorer", "RegionAttention", "MultiScaleRegionAttention",
           "AttentionPooling", "SqueezeExcite", "EfficientChannelAttention",
           "SpatialAttention", "CBAM", "CoordinateAttention", "AttentionNet",
           "RegionAttentionClassifier", "MILClassifier", "ResNet", "SmallCNN", "Conv"]
  for name in names:
    cls = getattr(rx, name)
    assert isinstance(cls, type) and issubclass(cls, nnx.Module), name
    assert not issubclass(cls, (nnx.bridge.ToNNX, nnx.bridge.ToLinen)), name


def test_twins_are_built_eagerly_with_the_linen_parameter_tree():
  model = rx.RegionAttentionClassifier(3, 4, backbone_kwargs={"features": (4, 8)},
                                       attention="se", attention_kwargs={"reduction": 2},
                                       rngs=nnx.Rngs(0))
  linen_variables = rn.RegionAttentionClassifier(
      4, backbone_kwargs={"features": (4, 8)}, attention="se",
      attention_kwargs={"reduction": 2}).init(jax.random.key(0), jnp.zeros(_IMAGES))
  shapes = lambda tree: jax.tree.map(jnp.shape, tree)
  assert shapes(rx.to_linen_variables(model)) == shapes(dict(linen_variables))


def test_make_attention_names_scorers():
  head = rx.make_attention("region", 8, grid=(2, 2), scorer="self_attention",
                           scorer_kwargs={"num_regions": 4, "embed_dim": 4, "num_heads": 2},
                           rngs=nnx.Rngs(0))
  assert isinstance(head.scorer, rx.SelfAttentionScorer)
  assert head.scorer.positions.shape == (4, 4)
  assert rx.make_attention(None, 8, rngs=nnx.Rngs(0)) is None
  with pytest.raises(ValueError, match="unknown attention kind"):
    rx.make_attention("bogus", 8, rngs=nnx.Rngs(0))


def test_from_linen_rejects_mismatched_variables():
  module = rn.SqueezeExcite(reduction=2)
  variables = module.init(jax.random.key(0), _input(_FEATURES))
  variables["params"]["mlp"]["extra"] = jnp.zeros(3)
  with pytest.raises(ValueError, match="do not match"):
    rx.from_linen(module, variables)


def test_jitted_train_step_does_not_retrace_or_grow_state():
  """Plain calls sow nothing (as Linen without mutable intermediates), so the module's
  graph stays fixed and `nnx.jit` traces the step once."""
  model = rx.RegionAttentionClassifier(3, 4, backbone_kwargs={"features": (4, 8)},
                                       head_kwargs={"grid": (2, 2)}, rngs=nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
  x, labels = _input(_IMAGES), jnp.array([0, 1])
  traces = []

  @nnx.jit
  def step(model, optimizer):
    traces.append(None)
    loss_fn = lambda m: optax.softmax_cross_entropy_with_integer_labels(
        m(x, train=True), labels).mean()
    loss, grads = nnx.value_and_grad(loss_fn)(model)
    optimizer.update(model, grads)
    return loss

  losses = [float(step(model, optimizer)) for _ in range(3)]
  assert len(traces) == 1
  assert not nnx.state(model, nnx.Intermediate)
  assert losses[-1] < losses[0]


def test_importing_the_linen_api_does_not_import_nnx():
  code = ("import sys, regionatt_jax, regionatt_jax.nn; "
          "print('flax.nnx' in sys.modules)")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True, timeout=120)
  assert out.stdout.strip() == "False"
