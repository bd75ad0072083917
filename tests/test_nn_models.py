"""Classifiers: they learn (overfit a tiny batch), keep shapes and dtypes, expose an
attention map, and reject bad configuration at init."""

import functools

import flax.linen as nn
from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import regionatt_jax.nn as rn
import regionatt_jax.nnx as rx


def _overfit(model, x, labels, steps, learning_rate=1e-2, **call_kwargs):
  """Adam on a fixed batch; returns (first loss, last loss)."""
  variables = jax.jit(functools.partial(model.init, train=False, **call_kwargs))(
      jax.random.key(0), x)
  params, stats = variables["params"], variables.get("batch_stats", {})
  optimizer = optax.adam(learning_rate)

  def loss_fn(params, stats):
    logits, state = model.apply({"params": params, "batch_stats": stats}, x, train=True,
                                mutable=["batch_stats"], **call_kwargs)
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, state.get("batch_stats", {})

  @jax.jit
  def step(params, stats, opt_state):
    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, stats)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), stats, opt_state, loss

  opt_state, losses = optimizer.init(params), []
  for _ in range(steps):
    params, stats, opt_state, loss = step(params, stats, opt_state)
    losses.append(float(loss))
  return losses[0], losses[-1]


def _batch(shape, num_classes, seed=0):
  """Random images with random labels: only memorizing them lowers the loss."""
  key_x, key_y = jax.random.split(jax.random.key(seed))
  return (jax.random.normal(key_x, shape),
          jax.random.randint(key_y, shape[:1], 0, num_classes))


CLASSIFIERS = {
    "attention_net": lambda **kw: rn.AttentionNet(4, features=(8, 16), **kw),
    "small_cnn_region": lambda **kw: rn.RegionAttentionClassifier(
        4, backbone_kwargs={"features": (8, 16)}, head_kwargs={"grid": (2, 2)}, **kw),
    "small_cnn_cbam_multiscale": lambda **kw: rn.RegionAttentionClassifier(
        4, backbone_kwargs={"features": (8, 16)}, attention="cbam",
        attention_kwargs={"reduction": 4}, head="multiscale",
        head_kwargs={"grids": ((1, 1), (2, 2), (4, 4))}, **kw),
    "small_cnn_residual_cbam": lambda **kw: rn.RegionAttentionClassifier(
        4, backbone_kwargs={"features": (8, 16), "placement": "residual"}, attention="cbam",
        attention_kwargs={"reduction": 4}, head=None, **kw),
    "resnet18_se_region": lambda **kw: rn.RegionAttentionClassifier(
        4, backbone="resnet18", backbone_kwargs={"width": 4}, attention="se",
        attention_kwargs={"reduction": 4}, head_kwargs={"grid": (2, 2)}, **kw),
}


def _slow_for_resnet(names):
  """ResNet-18 compiles 8 blocks: ~15 s on an idle 2-core machine, so it is marked slow."""
  return [pytest.param(n, marks=pytest.mark.slow) if n.startswith("resnet") else n
          for n in sorted(names)]


@pytest.mark.parametrize("name", _slow_for_resnet(CLASSIFIERS))
def test_classifier_overfits_a_tiny_batch(name):
  x, labels = _batch((8, 16, 16, 1), 4)
  first, last = _overfit(CLASSIFIERS[name](), x, labels, steps=150)
  assert last < first / 10, (first, last)


@pytest.mark.parametrize("pooling", ["attention", "gated", "mean", "max"])
def test_mil_classifier_overfits_a_tiny_batch_of_bags(pooling):
  x, labels = _batch((8, 4, 6, 6, 1), 2)
  mask = np.arange(4)[None] < np.array([4, 2, 3, 4, 1, 4, 2, 3])[:, None]
  model = rn.MILClassifier(2, features=(8,), embed_dim=16, hidden=8, pooling=pooling)
  first, last = _overfit(model, x, labels, steps=150, mask=mask)
  assert last < first / 10, (first, last)


@pytest.mark.parametrize("name", sorted(CLASSIFIERS))
@pytest.mark.parametrize("shape", [(3, 16, 16, 1), (2, 3, 32, 16, 3)])
def test_logits_shape_over_leading_axes(name, shape):
  model = CLASSIFIERS[name]()
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), x)
  assert jax.eval_shape(functools.partial(model.apply, train=False), variables, x).shape == (
      shape[:-3] + (4,))


@pytest.mark.parametrize("name", _slow_for_resnet(CLASSIFIERS))
def test_bfloat16_and_attention_map(name):
  model = CLASSIFIERS[name](dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
  x = jax.random.normal(jax.random.key(0), (2, 16, 16, 1), jnp.bfloat16)
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), x)
  param_dtypes = {p.dtype for p in jax.tree.leaves(variables["params"])}
  assert param_dtypes == {jnp.dtype(jnp.bfloat16)}
  logits, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=["intermediates"]))(
      variables, x)
  assert logits.shape == (2, 4) and logits.dtype == jnp.float32
  maps = rn.attention_maps(state, (16, 16))
  assert maps.shape == (2, 16, 16) and maps.dtype == jnp.float32


def test_attention_map_comes_from_the_head_not_the_stage_attention():
  model = CLASSIFIERS["small_cnn_cbam_multiscale"]()
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  variables = jax.jit(functools.partial(model.init, train=False))(jax.random.key(1), x)
  _, state = jax.jit(functools.partial(model.apply, train=False, mutable=["intermediates"]))(
      variables, x)
  head_map = state["intermediates"]["head"]["attention_map"][0]  # (2, 4, 4), the fused gain
  np.testing.assert_allclose(rn.attention_maps(state, (8, 8)),
                             np.repeat(np.repeat(head_map, 2, 1), 2, 2), rtol=1e-6)


def test_attention_net_map_is_the_sigmoid_of_its_attention_conv():
  model = rn.AttentionNet(3, features=(4, 6))
  x = jax.random.normal(jax.random.key(0), (5, 5, 7, 3))
  variables = model.init(jax.random.key(1), x)
  (logits, state), (_, features) = (
      model.apply(variables, x, train=True, mutable=["intermediates", "batch_stats"]),
      model.apply(variables, x, capture_intermediates=lambda m, _: m.name == "conv_1",
                  mutable=["intermediates"]))
  attention = np.asarray(rn.attention_maps(state, (5, 7)))
  assert ((attention > 0) & (attention < 1)).all()
  # Logits: Dense(BatchNorm over the batch of mean_hw(features * map)).
  feats = np.maximum(np.asarray(features["intermediates"]["conv_1"]["__call__"][0]), 0)
  pooled = (feats * attention[..., None]).mean((1, 2))
  normalized = (pooled - pooled.mean(0)) / np.sqrt(pooled.var(0) + 1e-5)
  norm, dense = variables["params"]["norm"], variables["params"]["classifier"]
  expected = (normalized * norm["scale"] + norm["bias"]) @ dense["kernel"] + dense["bias"]
  np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("placement", ["path", "residual"])
def test_small_cnn_stage_attention_gates_the_path_or_only_the_residual_branch(placement):
  """With every SE gate closed, the on-path placement outputs zeros; the published one
  (on the residual branch) leaves the 1x1 shortcut: relu(BatchNorm(x @ W))."""
  model = rn.SmallCNN(features=(4,), attention="se", attention_kwargs={"reduction": 2},
                      placement=placement)
  x = jax.random.normal(jax.random.key(0), (2, 6, 6, 3))
  variables = model.init(jax.random.key(1), x)
  params = variables["params"]
  if placement == "path":
    params = {**params, "attention_0": {"mlp": {**params["attention_0"]["mlp"], "expand": {
        "kernel": jnp.zeros((2, 4)), "bias": jnp.full((4,), -60.0)}}}}
  else:
    block = params["block_0"]
    params = {"block_0": {**block, "bn2": {**block["bn2"], "scale": jnp.ones(4)},
                          "attention": {"mlp": {**block["attention"]["mlp"], "expand": {
                              "kernel": jnp.zeros((2, 4)), "bias": jnp.full((4,), -60.0)}}}}}
  out = np.asarray(model.apply({**variables, "params": params}, x))
  if placement == "path":
    np.testing.assert_allclose(out, 0, atol=1e-12)
  else:
    shortcut = params["block_0"]["downsample_1"]
    kernel = np.asarray(params["block_0"]["downsample_0"]["kernel"])[0, 0]
    expected = np.maximum(np.asarray(x) @ kernel / np.sqrt(1 + 1e-5) * shortcut["scale"]
                          + shortcut["bias"], 0)
    assert np.abs(expected).max() > 0.1
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)


def _centre_input_gradient(apply, x):
  """`|d out[0, 2, 2, :].sum() / d x|` summed over channels: `(H, W)`."""
  return np.abs(np.asarray(jax.grad(lambda x: apply(x)[0, 2, 2].sum())(x)))[0].sum(-1)


def test_residual_small_cnn_sees_neighbouring_pixels_at_init():
  """A residual SmallCNN has no stem before its blocks: with branches that start at 0
  (a ResNet block's default, `zero_init_last`), its first stage at init would be a 1x1
  conv, blind to the neighbours of a pixel. Its branches start at scale 1, so it sees
  them (through two 3x3 convs: a 5x5 window), in Linen and in NNX."""
  x = jax.random.normal(jax.random.key(0), (1, 5, 5, 3))
  model = rn.SmallCNN(features=(4,), placement="residual")
  variables = model.init(jax.random.key(1), x)
  twin = rx.SmallCNN(3, features=(4,), placement="residual", rngs=nnx.Rngs(1))
  for apply in (lambda x: model.apply(variables, x), lambda x: twin(x, train=False)):
    grad = _centre_input_gradient(apply, x)
    assert grad[2, 2] > 0 and min(grad[1, 2], grad[2, 1], grad[3, 2], grad[2, 3]) > 0

  norm = functools.partial(nn.BatchNorm, use_running_average=True)
  block = rn.BasicBlock(4, 1, None, nn.Conv, norm)  # zero_init_last=True
  block_variables = block.init(jax.random.key(1), x, False)
  grad = _centre_input_gradient(lambda x: block.apply(block_variables, x, False), x)
  assert grad[2, 2] > 0
  np.testing.assert_array_equal(np.delete(grad.ravel(), 2 * 5 + 2), 0)


def test_small_cnn_default_placement_keeps_its_parameter_names():
  """Checkpoints of the default model (and the README's run) stay loadable."""
  x = jnp.zeros((1, 8, 8, 3))
  path = rn.SmallCNN(features=(4, 6)).init(jax.random.key(0), x)["params"]
  assert sorted(path) == ["bn_0", "bn_1", "conv_0", "conv_1"]
  residual = rn.SmallCNN(features=(4, 6), placement="residual").init(jax.random.key(0), x)
  assert sorted(residual["params"]) == ["block_0", "block_1"]
  with pytest.raises(ValueError, match="placement"):
    rn.SmallCNN(placement="branch").init(jax.random.key(0), x)


def test_mil_classifier_sows_instance_weights_respecting_the_mask():
  model = rn.MILClassifier(1, features=(4,), embed_dim=8, hidden=4)
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 6, 1))
  mask = np.array([[True, False, True, True, False], [True] * 5])
  variables = model.init(jax.random.key(1), x, mask=mask)
  logits, state = model.apply(variables, x, mask=mask, mutable=["intermediates"])
  weights = np.asarray(rn.instance_weights(state))
  assert logits.shape == (2, 1)
  np.testing.assert_array_equal(weights[~mask], 0.0)
  np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_instance_level_mil_pools_instance_positive_probabilities(pooling):
  """mi-Net: the bag's positive probability is the mean or max over its real instances of
  each instance's own positive probability; the logits are (log(1 - P), log P)."""
  model = rn.MILClassifier(2, features=(4,), embed_dim=8, pooling=pooling, level="instance")
  x = jax.random.normal(jax.random.key(0), (2, 5, 6, 6, 1))
  mask = np.array([[True, False, True, True, False], [True] * 5])
  variables = model.init(jax.random.key(1), x, mask=mask)
  logits, state = model.apply(variables, x, mask=mask, mutable=["intermediates"],
                              capture_intermediates=lambda m, _: m.name == "classifier")
  instance_logits = np.asarray(state["intermediates"]["classifier"]["__call__"][0])
  positive = np.exp(instance_logits[..., 1]) / np.exp(instance_logits).sum(-1)  # (2, 5)
  expected = [getattr(np, pooling)(p[m]) for p, m in zip(positive, mask)]
  np.testing.assert_allclose(np.exp(logits[:, 1]), expected, rtol=1e-5)
  np.testing.assert_allclose(np.exp(logits).sum(-1), 1.0, rtol=1e-5)
  weights = np.asarray(rn.instance_weights(state))
  np.testing.assert_array_equal(weights[~mask], 0.0)
  if pooling == "max":  # the weight sits on the most positive real instance
    top = [np.flatnonzero(m)[np.argmax(p[m])] for p, m in zip(positive, mask)]
    np.testing.assert_array_equal(weights.argmax(-1), top)


def test_instance_level_mil_learns_and_rejects_what_it_cannot_pool():
  x, labels = _batch((8, 4, 6, 6, 1), 2)
  model = rn.MILClassifier(2, features=(8,), embed_dim=16, pooling="max", level="instance")
  first, last = _overfit(model, x, labels, steps=150)
  assert last < first / 10, (first, last)
  for kwargs in ({"num_classes": 3, "pooling": "max"}, {"num_classes": 2,
                                                         "pooling": "attention"}):
    with pytest.raises(ValueError, match="level='instance'"):
      rn.MILClassifier(features=(4,), level="instance", **kwargs).init(jax.random.key(0), x)


def test_conv_class_is_one_attribute():
  calls = []

  class CountingConv(nn.Conv):
    def __call__(self, inputs):
      calls.append(self.name)
      return super().__call__(inputs)

  model = rn.RegionAttentionClassifier(
      2, backbone_kwargs={"features": (4, 8)}, head_kwargs={"grid": (2, 2)}, conv=CountingConv)
  jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                 jnp.ones((1, 8, 8, 1)))
  assert calls == ["conv_0", "conv_1"]


def test_bad_configuration_fails_at_init_with_a_clear_error():
  x = jnp.ones((1, 8, 8, 1))
  init = lambda model: model.init(jax.random.key(0), x, train=False)
  with pytest.raises(ValueError, match="unknown attention kind 'cbma'.*'cbam'"):
    rn.make_attention("cbma")
  with pytest.raises(ValueError, match="unknown attention kind 'cbma'"):
    init(rn.RegionAttentionClassifier(2, attention="cbma"))
  with pytest.raises(ValueError, match=r"grid \(8, 8\) is larger than the image \(4, 4\)"):
    init(rn.RegionAttentionClassifier(2, backbone_kwargs={"features": (4, 8)},
                                      head_kwargs={"grid": (8, 8)}))
  with pytest.raises(ValueError, match="channels=8, reduction=3"):
    init(rn.RegionAttentionClassifier(2, backbone_kwargs={"features": (8,)}, attention="se",
                                      attention_kwargs={"reduction": 3}))
  with pytest.raises(TypeError, match="bad options.*'se'"):
    rn.make_attention("se", grid=(2, 2))
  with pytest.raises(ValueError, match="backbone must be one of"):
    init(rn.RegionAttentionClassifier(2, backbone="vgg"))


def test_make_attention_builds_each_kind():
  assert rn.make_attention(None) is None and rn.make_attention("none") is None
  for kind, cls in rn.ATTENTIONS.items():
    assert type(rn.make_attention(kind)) is cls
  assert rn.make_attention("cbam", reduction=8).reduction == 8


@pytest.mark.parametrize("name", sorted(rn.SCORERS))
def test_scorer_by_name_equals_the_scorer_passed_explicitly(name):
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
  by_name = rn.make_attention("region", grid=(2, 2), scorer=name)
  explicit = rn.RegionAttention(grid=(2, 2), scorer=rn.SCORERS[name]())
  variables = explicit.init(jax.random.key(0), x, False)
  np.testing.assert_array_equal(by_name.apply(variables, x, False),
                                explicit.apply(variables, x, False))
  # Chosen by name inside a classifier, the scorer's parameters sit under the head.
  classifier = rn.RegionAttentionClassifier(3, backbone_kwargs={"features": (4,)},
                                            head_kwargs={"grid": (2, 2), "scorer": name})
  params = jax.eval_shape(functools.partial(classifier.init, train=False),
                          jax.random.key(0), x[..., :1])["params"]
  assert set(params["head"]) == {"scorer"} and not any("Scorer" in k for k in params)
  multi = rn.make_attention("multiscale", grids=((2, 2),), scorer=name)
  assert multi.scorer is rn.SCORERS[name]
  with pytest.raises(ValueError, match="unknown scorer 'lstm'.*'recurrent'"):
    rn.make_attention("region", scorer="lstm")


@pytest.mark.parametrize("backbone,torchvision_count", [("resnet18", 11_689_512),
                                                        ("resnet34", 21_797_672),
                                                        ("resnet50", 25_557_032)])
def test_resnet_parameter_counts_equal_torchvision(backbone, torchvision_count):
  # torchvision.models.resnet18()/34()/50(): ImageNet stem, 1000 classes, 3 input channels.
  model = rn.RegionAttentionClassifier(1000, backbone=backbone, head=None,
                                       backbone_kwargs={"stem": "imagenet"})
  variables = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                             jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert sum(int(np.prod(p.shape)) for p in jax.tree.leaves(variables["params"])) == (
      torchvision_count)


# Module attributes are checked at construction, with the module and attribute named.
BAD_ATTRIBUTES = [
    (lambda: rn.SpatialAttention(kernel_size=0), ValueError, r"SpatialAttention: kernel_size must be a positive int, got 0"),
    (lambda: rn.CBAM(kernel_size=0), ValueError, r"CBAM: kernel_size must be a positive int, got 0"),
    (lambda: rn.EfficientChannelAttention(gamma=0.0), ValueError, r"EfficientChannelAttention: gamma must be a finite real number > 0, got 0.0"),
    (lambda: rn.EfficientChannelAttention(kernel_size=4), ValueError, r"kernel_size must be a positive odd int, got 4"),
    (lambda: rn.SpatialAttention(kernel_size=None), TypeError, r"SpatialAttention: kernel_size must be a positive int, got NoneType None"),
    (lambda: rn.SpatialAttention(kernel_size=2.5), TypeError, r"kernel_size must be a positive int, got float 2.5"),
    (lambda: rn.CBAM(kernel_size="7"), TypeError, r"CBAM: kernel_size must be a positive int, got str '7'"),
    (lambda: rn.ConvScorer(kernel_size=-1), ValueError, r"ConvScorer: kernel_size must be a positive int, got -1"),
    (lambda: rn.SqueezeExcite(reduction="4"), TypeError, r"SqueezeExcite: reduction must be a positive int, got str '4'"),
    (lambda: rn.CBAM(reduction=None), TypeError, r"CBAM: reduction must be a positive int, got NoneType None"),
    (lambda: rn.CoordinateAttention(reduction=1.5), TypeError, r"CoordinateAttention: reduction must be a positive int, got float 1.5"),
    (lambda: rn.CoordinateAttention(momentum=float("nan")), ValueError, r"momentum must be a finite real number >= 0 <= 1, got nan"),
    (lambda: rn.RegionAttention(grid=(2, 2), temperature=np.float32(0)), ValueError, r"RegionAttention: temperature must be a finite real number > 0"),
    (lambda: rn.RegionAttention(grid=(2, 2), scorer="gated"), TypeError, r"RegionAttention: scorer must be a scorer module"),
    (lambda: rn.RegionAttention(grid=(2, 2), normalize=["softmax"]), TypeError, r"RegionAttention: normalize must be a str"),
    (lambda: rn.RegionAttention(grid=(2, 0)), ValueError, r"RegionAttention: grid must be >= 1"),
    (lambda: rn.MultiScaleRegionAttention(grids=()), TypeError, r"grids must be a non-empty sequence"),
    (lambda: rn.MLPScorer(hidden=(4, 0)), ValueError, r"MLPScorer: hidden must be a sequence of positive ints, got \(4, 0\)"),
    (lambda: rn.SelfAttentionScorer(embed_dim=10, num_heads=4), ValueError, r"num_heads must divide embed_dim"),
    (lambda: rn.GatedScorer(param_dtype=None), TypeError, r"GatedScorer: param_dtype must be a floating-point dtype"),
    (lambda: rn.AttentionPooling(kind="min"), ValueError, r"AttentionPooling: kind must be one of"),
    (lambda: rn.RegionAttentionClassifier(0), ValueError, r"RegionAttentionClassifier: num_classes must be a positive int, got 0"),
    (lambda: rn.RegionAttentionClassifier(2, attention=["se"]), TypeError, r"RegionAttentionClassifier: attention must be a str"),
    (lambda: rn.ResNet(stem="big"), ValueError, r"ResNet: stem must be one of"),
    (lambda: rn.make_attention(["se"]), TypeError, r"make_attention: kind must be a str \(a key of ATTENTIONS\) or None, got list \['se'\]"),
    (lambda: rn.make_attention("region", grid=(2, 2), scorer=["gated"]), TypeError, r"RegionAttention: scorer must be"),
    (lambda: rn.make_attention("multiscale", scorer=3), TypeError, r"MultiScaleRegionAttention: scorer must be a scorer class or factory, got int 3"),
    (lambda: rn.eca_kernel_size(64, gamma=0.0), ValueError, r"gamma must be a finite real number > 0, got 0.0"),
    (lambda: rn.attention_maps({"attention_map": (jnp.ones((1, 2, 2)),)}, None), TypeError, r"image_shape must be an int or a pair of ints"),
]


@pytest.mark.parametrize("build,error,message", BAD_ATTRIBUTES,
                         ids=[m[:40] for _, _, m in BAD_ATTRIBUTES])
def test_bad_attributes_fail_at_construction(build, error, message):
  with pytest.raises(error, match=message):
    build()


def test_validated_modules_survive_clone_and_init():
  """Flax clones modules (`clone`, binding in `init`/`apply`): the checks rerun and pass."""
  module = rn.RegionAttention(grid=(2, 2), temperature=0.5)
  x = jnp.ones((1, 4, 4, 2))
  variables = module.init(jax.random.key(0), x)
  assert module.clone(temperature=2.0).apply(variables, x).shape == (1, 2, 2, 2)
  with pytest.raises(ValueError, match="temperature"):
    module.clone(temperature=-1.0)
