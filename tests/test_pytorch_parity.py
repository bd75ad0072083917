"""The PyTorch version and the Flax modules compute the same function.

With weights converted from a torch model: outputs within 1e-5, gradients w.r.t. inputs
and parameters within 1e-4, and one Adam step lands on the same parameters within 1e-5.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

torch = pytest.importorskip(
    "torch", reason="parity with the PyTorch version needs torch (pip install .[torch])")
from torch.nn import functional as F  # noqa: E402

import regionatt_jax as ra  # noqa: E402
import regionatt_jax.nn as ra_nn  # noqa: E402
from regionatt_jax import pytorch as ra_torch  # noqa: E402
from regionatt_jax.nn.conv import Conv  # noqa: E402

NUM_CLASSES = 5
LEARNING_RATE = 1e-2


def _close(got, want, tol):
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=tol, atol=tol)


def _trees_close(got, want, tol):
  assert jax.tree.structure(got) == jax.tree.structure(want)
  jax.tree.map(lambda g, w: _close(g, w, tol), got, want)


def _torch_grads_as_flax(model):
  """Parameter gradients of `model`, converted like its weights (BN buffers for structure)."""
  grads = {name: p.grad for name, p in model.named_parameters()}
  return ra_torch.torch_to_flax({**model.state_dict(), **grads})["params"]


def _images(shape, seed=0):
  nchw = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
  return nchw, jnp.asarray(nchw.transpose(0, 2, 3, 1))


def _pair(name):
  """(torch model, flax model, input NCHW shape) of each converted configuration."""
  torch.manual_seed(0)
  if name == "attention_net":
    return ra_torch.AttentionNet(NUM_CLASSES), ra_nn.AttentionNet(NUM_CLASSES), (8, 3, 12, 12)
  if name == "attention_net_fast_conv":
    return (ra_torch.AttentionNet(NUM_CLASSES, features=(16, 24)),
            ra_nn.AttentionNet(NUM_CLASSES, features=(16, 24), conv=Conv), (8, 3, 12, 12))
  head = name == "region_classifier"  # cnn_classifier: the same backbone, global mean
  return (ra_torch.RegionAttentionClassifier(NUM_CLASSES, features=(8, 16, 24), head=head),
          ra_nn.RegionAttentionClassifier(NUM_CLASSES, backbone_kwargs={"features": (8, 16, 24)},
                                          head="region" if head else None),
          (4, 3, 32, 32))


MODELS = ["attention_net", "attention_net_fast_conv", "region_classifier", "cnn_classifier"]


def _flax_loss(flax_model, variables, train):
  params, state = variables["params"], {k: v for k, v in variables.items() if k != "params"}

  def loss(params, images, labels):
    out = flax_model.apply({"params": params, **state}, images, train=train,
                           mutable=list(state) if train else False)
    logits = out[0] if train else out
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  return loss, params


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("train", [False, True])
def test_outputs_and_gradients_match(name, train):
  torch_model, flax_model, shape = _pair(name)
  torch_model.train(train)
  nchw, nhwc = _images(shape)
  labels = np.arange(shape[0]) % NUM_CLASSES
  variables = ra_torch.torch_to_flax(torch_model.state_dict())

  x = torch.from_numpy(nchw).requires_grad_()
  logits = torch_model(x)
  F.cross_entropy(logits, torch.from_numpy(labels)).backward()
  flax_logits = flax_model.apply(variables, nhwc, train=train,
                                 mutable=["batch_stats"] if train else False)
  flax_logits = flax_logits[0] if isinstance(flax_logits, tuple) else flax_logits
  _close(flax_logits, logits.detach().numpy(), 1e-5)

  loss, params = _flax_loss(flax_model, variables, train)
  grad_params, grad_x = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, nhwc, labels)
  _close(grad_x, x.grad.numpy().transpose(0, 2, 3, 1), 1e-4)
  _trees_close(grad_params, _torch_grads_as_flax(torch_model), 1e-4)


# Adam's first step is ~lr * g / (|g| + eps): with eps = 1e-8 it is lr * sign(g), which
# turns float32 gradient differences of ~1e-7 on near-zero gradients (e.g. the scorer's
# output bias, whose true gradient is 0 under the softmax) into differences of lr; the
# BatchNorm on AttentionNet's pooled features leaves gradient differences up to ~1e-6 in
# its convs. So the end-to-end step uses eps = 1e-2 (sensitivity lr / eps * 1e-6 = 1e-6),
# and the update rule itself is checked at the default eps on identical gradients.
@pytest.mark.parametrize("name", MODELS)
def test_one_adam_train_step_gives_the_same_parameters(name):
  torch_model, flax_model, shape = _pair(name)
  nchw, nhwc = _images(shape, seed=1)
  labels = np.arange(shape[0]) % NUM_CLASSES
  variables = ra_torch.torch_to_flax(torch_model.state_dict())

  optimizer = torch.optim.Adam(torch_model.parameters(), lr=LEARNING_RATE, eps=1e-2)
  optimizer.zero_grad()
  F.cross_entropy(torch_model(torch.from_numpy(nchw)), torch.from_numpy(labels)).backward()
  optimizer.step()

  loss, params = _flax_loss(flax_model, variables, train=True)
  tx = optax.adam(LEARNING_RATE, eps=1e-2)
  updates, _ = tx.update(jax.grad(loss)(params, nhwc, labels), tx.init(params), params)
  stepped = optax.apply_updates(params, updates)
  assert not np.allclose(stepped["classifier"]["kernel"], params["classifier"]["kernel"])
  _trees_close(stepped, ra_torch.torch_to_flax(torch_model.state_dict())["params"], 1e-5)


def test_adam_steps_agree_on_identical_gradients():
  torch_model, flax_model, shape = _pair("region_classifier")
  variables = ra_torch.torch_to_flax(torch_model.state_dict())
  params = variables["params"]
  tx, optimizer = optax.adam(LEARNING_RATE), torch.optim.Adam(torch_model.parameters(),
                                                              lr=LEARNING_RATE)
  opt_state = tx.init(params)
  for step in range(3):  # past the first step, so the moments' bias corrections matter
    grads = jax.tree.map(
        lambda p, s=step: jnp.asarray(np.random.default_rng(s).standard_normal(p.shape),
                                      jnp.float32) * 1e-3, params)
    torch_grads = ra_torch.flax_to_torch({"params": grads, **{k: v for k, v in variables.items()
                                                              if k != "params"}})
    for name, p in torch_model.named_parameters():
      p.grad = torch_grads[name].clone()
    optimizer.step()
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
  _trees_close(params, ra_torch.torch_to_flax(torch_model.state_dict())["params"], 1e-5)


def test_batch_norm_statistics_differ_only_by_bessel_correction():
  """Flax updates the running variance with the biased batch variance, PyTorch with the
  unbiased one; the running means agree."""
  torch_model, flax_model, shape = _pair("region_classifier")
  nchw, nhwc = _images(shape, seed=2)
  variables = ra_torch.torch_to_flax(torch_model.state_dict())
  torch_model.train()
  torch_model(torch.from_numpy(nchw))
  _, new_state = flax_model.apply(variables, nhwc, train=True, mutable=["batch_stats"])
  torch_stats = ra_torch.torch_to_flax(torch_model.state_dict())["batch_stats"]["backbone"]
  for i, count in enumerate((4 * 32 * 32, 4 * 16 * 16, 4 * 8 * 8)):  # pixels per channel
    flax_bn, torch_bn = new_state["batch_stats"]["backbone"][f"bn_{i}"], torch_stats[f"bn_{i}"]
    _close(flax_bn["mean"], torch_bn["mean"], 1e-5)
    biased = (flax_bn["var"] - 0.9) / 0.1  # started at 1
    _close(0.9 + 0.1 * biased * count / (count - 1), torch_bn["var"], 1e-5)


@pytest.mark.parametrize("form", ra_torch.FORMS)
def test_region_attention_block_matches(form):
  torch.manual_seed(0)
  block = ra_torch.RegionAttention(8, grid=(4, 4), form=form)
  flax_block = ra_nn.RegionAttention(grid=(4, 4))
  x_np = np.random.default_rng(3).standard_normal((2, 8, 12, 8)).astype(np.float32)
  cotangent = np.random.default_rng(4).standard_normal((2, 2, 3, 8)).astype(np.float32)
  variables = {"params": {"scorer": ra_torch.torch_to_flax(block.scorer.state_dict())["params"]}}

  x = torch.from_numpy(x_np).requires_grad_()
  y = block(x)
  (y * torch.from_numpy(cotangent)).sum().backward()

  def loss(params, x):
    return jnp.sum(flax_block.apply({"params": params}, x) * cotangent)

  _close(flax_block.apply(variables, x_np), y.detach().numpy(), 1e-5)
  grad_params, grad_x = jax.grad(loss, argnums=(0, 1))(variables["params"], x_np)
  _close(grad_x, x.grad.numpy(), 1e-4)
  _trees_close(grad_params["scorer"], ra_torch.torch_to_flax(
      {n: p.grad for n, p in block.scorer.named_parameters()})["params"], 1e-4)


def test_region_attention_op_forms_match_the_jax_op():
  """The torch op's two forms against `regionatt_jax.region_attention` with the same scores."""
  x = np.random.default_rng(5).standard_normal((3, 8, 8, 4)).astype(np.float32)
  w = np.random.default_rng(6).standard_normal(4).astype(np.float32)
  y_jax, a_jax = ra.region_attention(x, lambda r: r.mean(axis=(-3, -2)) @ w, (2, 4))
  for form in ra_torch.FORMS:
    y, a = ra_torch.region_attention(torch.from_numpy(x),
                                     lambda r: r.mean(dim=(-3, -2)) @ torch.from_numpy(w),
                                     (2, 4), form)
    _close(y.numpy(), y_jax, 1e-5)
    _close(a.numpy(), a_jax, 1e-6)


@pytest.mark.parametrize("name", MODELS)
def test_conversion_round_trips_and_matches_flax_init_structure(name):
  torch_model, flax_model, shape = _pair(name)
  state_dict = torch_model.state_dict()
  variables = ra_torch.torch_to_flax(state_dict)
  init = jax.eval_shape(flax_model.init, jax.random.PRNGKey(0),
                        jnp.zeros((1, shape[2], shape[3], shape[1])))
  assert jax.tree.map(jnp.shape, variables) == jax.tree.map(jnp.shape, init)
  back = ra_torch.flax_to_torch(variables)
  assert set(back) == set(state_dict)
  for key, tensor in state_dict.items():
    expected = torch.zeros_like(tensor) if key.endswith("num_batches_tracked") else tensor
    torch.testing.assert_close(back[key], expected, rtol=0, atol=0)


def test_flax_conv_and_fast_conv_weights_are_interchangeable():
  variables = ra_torch.torch_to_flax(ra_torch.AttentionNet(NUM_CLASSES, features=(16, 24))
                                     .state_dict())
  _, x = _images((2, 3, 10, 10))
  _close(ra_nn.AttentionNet(NUM_CLASSES, features=(16, 24), conv=Conv).apply(variables, x),
         ra_nn.AttentionNet(NUM_CLASSES, features=(16, 24), conv=nn.Conv).apply(variables, x),
         1e-5)


def test_converter_rejects_unknown_entries():
  with pytest.raises(ValueError, match="conv.weight"):
    ra_torch.torch_to_flax({"conv.weight": torch.zeros(2, 3, 4)})
  with pytest.raises(ValueError, match="scale"):
    ra_torch.torch_to_flax({"layer.scale": torch.zeros(2)})
