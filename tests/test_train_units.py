"""Unit tests of the training pieces: config validation, optimizer, steps, metrics."""

import json
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from regionatt_jax import nn as ra_nn
from regionatt_jax.train import config as config_lib
from regionatt_jax.train import metrics as metrics_lib
from regionatt_jax.train import optim as optim_lib
from regionatt_jax.train import sharding as sharding_lib
from regionatt_jax.train import state as state_lib
from regionatt_jax.train import step as step_lib
from regionatt_jax.train import timer as timer_lib
from tests.helpers import TinyCNN, synthetic_batches


class Linear(nn.Module):
  """Logits linear in the pixels: gradients of a mean loss add up over micro-batches."""

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(10)(x.reshape(x.shape[0], -1))


def _config(steps=10, **optim):
  config = config_lib.base_config()
  config.train.steps = steps
  for key, value in optim.items():
    config.optim[key] = value
  return config


# --- config validation ------------------------------------------------------------

@pytest.mark.parametrize("mutate, error, names", [
    (lambda c: c.train.__setattr__("stpes", 3), ValueError, "'train.stpes'"),
    (lambda c: c.__setattr__("extra", 1), ValueError, "'extra'"),
    (lambda c: c.train.__setattr__("steps", -5), ValueError, "'train.steps'"),
    (lambda c: c.optim.__setattr__("learning_rate", 0.0), ValueError, "'optim.learning_rate'"),
    (lambda c: c.optim.__setattr__("name", "adagrad"), ValueError, "'optim.name'"),
    (lambda c: c.train.__setattr__("compute_dtype", "float8"), ValueError,
     "'train.compute_dtype'"),
    (lambda c: c.optim.__setattr__("grad_accum_steps", 3), ValueError, "'train.steps'"),
    (lambda c: c.mesh.__setattr__("model_axis_size", 3), ValueError, "'mesh.model_axis_size'"),
])
def test_validate_config_names_the_bad_key(mutate, error, names):
  config = config_lib.base_config()
  mutate(config)
  with pytest.raises(error, match=names):
    config_lib.validate_config(config, num_devices=8)


def test_validate_config_rejects_wrong_types():
  config = config_lib.base_config()
  # A ConfigDict refuses a wrong-typed assignment itself; a config file built as a dict
  # gets through that, so validation checks the types again.
  as_dict = config.to_dict()
  as_dict["train"]["steps"] = "100"
  with pytest.raises(TypeError, match="'train.steps'.*int"):
    config_lib.validate_config(ml_collections.ConfigDict(as_dict), num_devices=1)
  as_dict["train"]["steps"] = True
  with pytest.raises(TypeError, match="'train.steps'"):
    config_lib.validate_config(ml_collections.ConfigDict(as_dict), num_devices=1)


def test_validate_config_batch_must_split_over_devices_and_hosts():
  config = config_lib.base_config()
  config.train.global_batch_size = 12
  config_lib.validate_config(config, num_devices=4)  # 12 = 4 * 3: fine.
  with pytest.raises(ValueError, match="'train.global_batch_size' \\(12\\).*devices \\(8\\)"):
    config_lib.validate_config(config, num_devices=8)
  config.mesh.model_axis_size = 2  # 8 devices = 4 data x 2 model: 12 splits over 4.
  config_lib.validate_config(config, num_devices=8)
  with pytest.raises(ValueError, match="processes \\(5\\)"):
    config.train.global_batch_size = 16
    config.train.eval_batch_size = 20
    config_lib.validate_config(config, num_devices=4, process_count=5)


def test_build_model_names_unknown_model_and_field():
  model = ra_nn.build_model({"name": "MILClassifier", "kwargs": {"pooling": "gated"}}, 3)
  assert isinstance(model, ra_nn.MILClassifier) and model.pooling == "gated"
  assert model.num_classes == 3
  with pytest.raises(ValueError, match="'model.kwargs.featurs'.*MILClassifier"):
    ra_nn.build_model({"name": "MILClassifier", "kwargs": {"featurs": 4}}, 3)
  with pytest.raises(ValueError, match="'model.name'.*ResNet9000"):
    ra_nn.build_model({"name": "ResNet9000"}, 3)
  with pytest.raises(TypeError, match="'model.name' must be a str.*list"):
    ra_nn.build_model({"name": ["MILClassifier"]}, 3)


# --- optimizer --------------------------------------------------------------------

def test_schedule_is_linear_warmup_then_cosine():
  config = _config(steps=100, learning_rate=0.1, warmup_steps=10, end_learning_rate_ratio=0.1)
  schedule = optim_lib.make_optimizer(config).learning_rate
  for step in (0, 5, 10, 40, 99):
    if step < 10:
      expected = 0.1 * step / 10
    else:
      progress = (step - 10) / 90
      expected = 0.01 + (0.1 - 0.01) * 0.5 * (1 + math.cos(math.pi * progress))
    np.testing.assert_allclose(float(schedule(step)), expected, rtol=1e-5)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_weight_decay_skips_biases_and_norm_scales(name):
  # With zero gradients only weight decay moves the params: kernels shrink, biases
  # and BatchNorm scales stay.
  config = _config(name=name, learning_rate=0.5, warmup_steps=0, schedule="constant",
                   weight_decay=0.1, clip_norm=0.0)
  tx = optim_lib.make_optimizer(config).tx
  params = {"dense": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones((2,))},
            "bn": {"scale": jnp.ones((2,))}}
  updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.5 * 0.1 * np.ones((3, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)
  np.testing.assert_array_equal(updates["bn"]["scale"], 0.0)


@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_backbone_lr_multiplier_is_the_learning_rate_of_the_backbone_only(name):
  """With the multiplier 0.1 the backbone's own leaves follow a run at a tenth of the
  learning rate (weight decay included); its attention module and the head follow the
  run at the full rate."""
  params = {"backbone": {"conv1": {"kernel": jnp.ones((3, 3, 2, 4))},
                         "layer1_0": {"attention": {"kernel": jnp.ones((4, 2))}}},
            "classifier": {"kernel": jnp.ones((4, 5)), "bias": jnp.ones((5,))}}

  def stepped(learning_rate, multiplier):
    tx = optim_lib.make_optimizer(_config(
        name=name, learning_rate=learning_rate, backbone_lr_multiplier=multiplier,
        warmup_steps=0, schedule="constant", weight_decay=0.1, clip_norm=0.0)).tx
    p, opt_state = params, tx.init(params)
    for seed in range(3):
      rng = np.random.default_rng(seed)
      grads = jax.tree.map(lambda x: jnp.asarray(rng.standard_normal(x.shape), x.dtype), p)
      updates, opt_state = tx.update(grads, opt_state, p)
      p = jax.tree.map(jnp.add, p, updates)
    return p

  scaled, full, tenth = stepped(0.1, 0.1), stepped(0.1, 1.0), stepped(0.01, 1.0)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
  close(scaled["backbone"]["conv1"]["kernel"], tenth["backbone"]["conv1"]["kernel"])
  jax.tree.map(close, scaled["backbone"]["layer1_0"], full["backbone"]["layer1_0"])
  jax.tree.map(close, scaled["classifier"], full["classifier"])
  assert not np.allclose(tenth["classifier"]["kernel"], full["classifier"]["kernel"])
  tx = optim_lib.make_optimizer(_config(backbone_lr_multiplier=0.1)).tx
  with pytest.raises(ValueError, match="'optim.backbone_lr_multiplier' needs .* 'backbone'"):
    tx.init({"classifier": params["classifier"]})


def test_gradient_clipping_bounds_the_update():
  config = _config(name="sgd", learning_rate=1.0, warmup_steps=0, schedule="constant",
                   weight_decay=0.0, momentum=0.0, clip_norm=2.0)
  tx = optim_lib.make_optimizer(config).tx
  params = {"w": jnp.zeros((4,))}
  updates, _ = tx.update({"w": jnp.full((4,), 10.0)}, tx.init(params), params)
  np.testing.assert_allclose(updates["w"], -np.full(4, 1.0), rtol=1e-6)  # norm 20 -> 2


def test_gradient_accumulation_equals_one_big_batch():
  """Two micro-batches with grad_accum_steps=2 == one step on their concatenation."""
  mesh = sharding_lib.make_mesh(devices=jax.devices()[:1])
  half_a, half_b = synthetic_batches(2, 8, seed=3)
  full = {k: np.concatenate([half_a[k], half_b[k]]) for k in half_a}
  kw = dict(learning_rate=0.1, warmup_steps=0, schedule="constant", clip_norm=0.0)
  rng = jax.random.PRNGKey(0)

  big = state_lib.create_train_state(_config(steps=2, **kw), Linear(), rng, (1, 16, 16, 3), mesh=mesh)
  train = jax.jit(step_lib.train_step)
  big, _ = train(big, full)

  accum = state_lib.create_train_state(_config(steps=4, grad_accum_steps=2, **kw), Linear(),
                                       rng, (1, 16, 16, 3), mesh=mesh)
  accum, _ = train(accum, half_a)
  unchanged = jax.tree.map(np.asarray, accum.params)
  accum, _ = train(accum, half_b)
  init = state_lib.create_train_state(_config(steps=2, **kw), Linear(), rng, (1, 16, 16, 3), mesh=mesh)
  # The first micro-step leaves params alone; the second applies the mean gradient.
  jax.tree.map(np.testing.assert_array_equal, unchanged, jax.tree.map(np.asarray, init.params))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), accum.params, big.params)


# --- steps ------------------------------------------------------------------------

@pytest.mark.parametrize("compute_dtype", ["float32", "bfloat16"])
def test_train_step_learns_and_keeps_float32_params(compute_dtype):
  dtype = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}[compute_dtype]
  config = _config(steps=30, learning_rate=3e-2, warmup_steps=0, schedule="constant")
  config.train.compute_dtype = compute_dtype
  state = state_lib.create_train_state(config, TinyCNN(dtype=dtype), jax.random.PRNGKey(0),
                                       (1, 16, 16, 3))
  train, _, _ = step_lib.jit_steps(state)
  (batch,) = synthetic_batches(1, 16, seed=1)
  losses = []
  for _ in range(30):
    state, metrics = train(state, batch)
    losses.append(float(metrics["loss"]))
  assert losses[-1] < 0.5 * losses[0], losses
  assert int(state.step) == 30
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.batch_stats))


def test_eval_step_ignores_padding_and_matches_numpy():
  state = state_lib.create_train_state(_config(), TinyCNN(), jax.random.PRNGKey(0), (1, 16, 16, 3))
  (batch,) = synthetic_batches(1, 8, seed=2)
  # Quadrant boxes for the real examples (some maps point inside, some not); the padding
  # examples' boxes cover the whole image, so counting them would add hits.
  quadrants = [[0, 0, 8, 8], [0, 8, 8, 16], [8, 0, 16, 8], [8, 8, 16, 16], [4, 4, 12, 12]]
  boxes = np.array(quadrants + [[0, 0, 16, 16]] * 3, np.float32)
  mask = np.arange(8) < 5
  _, evaluate, predict = step_lib.jit_steps(state)
  sums = evaluate(state, dict(batch, box=boxes, example_mask=mask))
  logits, maps = predict(state, batch)
  logits, maps = np.asarray(logits)[:5], np.asarray(maps)[:5]
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  np.testing.assert_allclose(float(sums["count"]), 5)
  np.testing.assert_allclose(float(sums["correct"]),
                             (logits.argmax(-1) == batch["label"][:5]).sum())
  np.testing.assert_allclose(float(sums["loss_sum"]),
                             -log_probs[np.arange(5), batch["label"][:5]].sum(), rtol=1e-5)
  hits = sum(_pointing_reference(m, b) for m, b in zip(maps, boxes[:5]))
  np.testing.assert_allclose(float(sums["pointing_hits"]), hits)


# --- metrics ----------------------------------------------------------------------

def _pointing_reference(attention, box):
  """Plain loops: centroid of the maximal pixels, inside the half-open box?"""
  top = attention.max()
  ys, xs = [], []
  for y in range(attention.shape[0]):
    for x in range(attention.shape[1]):
      if attention[y, x] == top:
        ys.append(y + 0.5)
        xs.append(x + 0.5)
  cy, cx = sum(ys) / len(ys), sum(xs) / len(xs)
  return box[0] <= cy < box[2] and box[1] <= cx < box[3]


def test_pointing_game_matches_loop_reference():
  rng = np.random.default_rng(0)
  maps = rng.normal(size=(64, 12, 12)).astype(np.float32)
  # Region-constant maps (4x4 regions of 3x3 pixels), as a region model paints them.
  maps[32:] = np.kron(rng.integers(0, 3, (32, 4, 4)), np.ones((3, 3))).astype(np.float32)
  y0, x0 = rng.integers(0, 9, 64), rng.integers(0, 9, 64)
  boxes = np.stack([y0, x0, y0 + rng.integers(1, 4, 64), x0 + rng.integers(1, 4, 64)], -1)
  boxes = boxes.astype(np.float32)
  hits = np.asarray(jax.jit(metrics_lib.pointing_game_hits)(maps, boxes))
  expected = [_pointing_reference(m, b) for m, b in zip(maps, boxes)]
  np.testing.assert_array_equal(hits, expected)
  assert 0 < hits.sum() < 64


def test_pointing_game_region_map_points_at_region_centre():
  attention = np.zeros((1, 8, 8), np.float32)
  attention[0, 4:8, 4:8] = 1.0  # bottom-right 4x4 region; centre (6, 6)
  inside = np.array([[5, 5, 7, 7]], np.float32)
  corner_only = np.array([[4, 4, 5, 5]], np.float32)  # where a plain argmax would land
  assert bool(metrics_lib.pointing_game_hits(attention, inside)[0])
  assert not bool(metrics_lib.pointing_game_hits(attention, corner_only)[0])


def test_metric_writer_jsonl_and_truncation(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path), enabled=True)
  for step in (1, 2, 3):
    writer.write(step, "train", {"loss": 1.0 / step})
  writer.truncate_after(2)
  writer.write(3, "train", {"loss": 0.25})
  writer.close()
  records = metrics_lib.read_jsonl(str(tmp_path / "metrics.jsonl"))
  assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 0.5), (3, 0.25)]
  assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "tensorboard").iterdir())
  json.dumps(records)


def test_step_timer_leaves_out_the_compiling_step_and_the_pauses():
  now = [0.0]
  timer = timer_lib.StepTimer(clock=lambda: now[0])
  outputs = jnp.zeros(())
  now[0] = 5.0   # the first step compiles for 5 s; the clock starts when it ends
  timer.step(outputs)
  for _ in range(3):  # three steps of 0.5 s
    now[0] += 0.5
    timer.step(outputs)
  with timer.paused(outputs):
    now[0] += 10.0  # evaluation
    assert timer.lap() == (3, 1.5)  # asked during the pause: the pause is not counted
  now[0] += 0.25
  timer.step(outputs)
  assert timer.lap() == (1, 0.25)
  assert timer.total() == (4, 1.75)
  assert timer_lib.throughput(4, 1.75, batch_size=8) == pytest.approx(
      {"step_time_s": 1.75 / 4, "images_per_sec": 32 / 1.75})
  assert timer_lib.throughput(0, 0.0, batch_size=8) == {}
