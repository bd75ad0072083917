"""The train state and its creation, directly on the device mesh."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import optax
from jax.sharding import Mesh

from regionatt_jax.train import optim as optim_lib
from regionatt_jax.train import pretrained as pretrained_lib
from regionatt_jax.train import sharding as sharding_lib


@flax.struct.dataclass
class TrainState:
  """Everything a training step reads and writes.

  Attributes:
    step: `()` int32, micro-batches trained so far.
    params: float32 model parameters.
    batch_stats: BatchNorm running statistics (`{}` for models without BatchNorm).
    opt_state: the optimizer's state.
    rng: `(2,)` uint32 key; step `s` uses `fold_in(rng, s)`, so randomness depends on
      the step only and a resumed run draws the same numbers.
    apply_fn: the model's `apply` (static).
    tx: the optimizer chain (static).
    learning_rate: the schedule, for logging (static).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array
  apply_fn: Callable[..., Any] = flax.struct.field(pytree_node=False)
  tx: optax.GradientTransformation = flax.struct.field(pytree_node=False)
  learning_rate: optax.Schedule = flax.struct.field(pytree_node=False)

  def checkpoint_items(self) -> dict[str, Any]:
    """The arrays a checkpoint holds (everything but the static functions)."""
    return dict(step=self.step, params=self.params, batch_stats=self.batch_stats,
                opt_state=self.opt_state, rng=self.rng)


def _initializer(config: ml_collections.ConfigDict, model: nn.Module,
                 input_shape: Sequence[int]) -> Callable[[jax.Array, Any], TrainState]:
  """`init(key, pretrained)`: the step-0 state; `pretrained` (or None) holds variables
  that `pretrained_lib.merge_pretrained` puts over the initialized ones."""
  optimizer = optim_lib.make_optimizer(config)

  def init(key: jax.Array, pretrained: Any) -> TrainState:
    init_rng, state_rng = jax.random.split(key)
    variables = model.init({"params": init_rng, "dropout": init_rng},
                           jnp.zeros(tuple(input_shape), jnp.float32), train=False)
    if pretrained is not None:
      variables = pretrained_lib.merge_pretrained(variables, pretrained).variables
    params = variables["params"]
    return TrainState(
        step=jnp.zeros((), jnp.int32), params=params,
        batch_stats=variables.get("batch_stats", {}),
        opt_state=optimizer.tx.init(params), rng=state_rng,
        apply_fn=model.apply, tx=optimizer.tx, learning_rate=optimizer.learning_rate)

  return init


def create_train_state(config: ml_collections.ConfigDict, model: nn.Module, rng: jax.Array,
                       input_shape: Sequence[int], *, mesh: Mesh | None = None) -> TrainState:
  """Initializes model and optimizer, placing each leaf with its mesh sharding.

  Every process computes the same state from the same `rng`, so hosts agree without
  communicating. With `config.model.pretrained` the backbone starts from that file
  (see `pretrained_lib.load_pretrained_backbone`); the rest as initialized.

  Args:
    config: the run's configuration (uses `optim`, `train.steps`, `mesh`,
      `model.pretrained`).
    model: a Flax module called as `model.apply(variables, x, train=...)`.
    rng: `(2,)` uint32 key.
    input_shape: `(B, H, W, C)` shape of an input batch (B may be 1).
    mesh: where the state lives; default: all devices, `config.mesh.model_axis_size`.

  Returns:
    The initial `TrainState` at step 0.

  Raises:
    ValueError: a `model.pretrained` file that cannot be read or does not fit the model,
      naming the file and the first offending key.
  """
  mesh = mesh or sharding_lib.make_mesh(config.mesh.model_axis_size)
  pretrained = None
  if config.model.pretrained:
    pretrained, _ = pretrained_lib.load_pretrained_backbone(
        config.model.pretrained, model, input_shape)
  init = _initializer(config, model, input_shape)
  shardings = sharding_lib.state_sharding(jax.eval_shape(init, rng, pretrained), mesh)
  return jax.jit(init, out_shardings=shardings)(rng, pretrained)


def abstract_train_state(config: ml_collections.ConfigDict, model: nn.Module,
                         input_shape: Sequence[int], mesh: Mesh) -> TrainState:
  """Shapes, dtypes and shardings of `create_train_state`'s result, without computing it
  (or reading a pretrained file: it changes values, not shapes)."""
  abstract = jax.eval_shape(_initializer(config, model, input_shape), jax.random.PRNGKey(0),
                            None)
  shardings = sharding_lib.state_sharding(abstract, mesh)
  return jax.tree.map(
      lambda leaf, sharding: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=sharding),
      abstract, shardings)
