"""Placing the train state and batches on a device mesh, on one host or many.

The mesh has a 'data' axis (batch split across it) and a 'model' axis (kernels split
along their output features when `mesh.model_axis_size > 1`; replicated otherwise).
The same code runs multi-host after `jax.distributed.initialize()`: each process feeds
its own `global_batch // process_count` examples and
`jax.make_array_from_process_local_data` stitches them into one global array.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"
MODEL_AXIS = "model"


def make_mesh(model_axis_size: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A `(data, model)` mesh over `devices` (default: every device of every process).

  Args:
    model_axis_size: devices along the 'model' axis; must divide the device count.
    devices: the devices to use, in order; `jax.devices()` when None.

  Returns:
    A `Mesh` with axes `('data', 'model')` of shape `(len(devices) // model_axis_size,
    model_axis_size)`.
  """
  devices = list(jax.devices() if devices is None else devices)
  if model_axis_size <= 0 or len(devices) % model_axis_size:
    raise ValueError(
        f"model_axis_size must be a positive divisor of the device count "
        f"({len(devices)}), got {model_axis_size}.")
  grid = np.asarray(devices, dtype=object).reshape(-1, model_axis_size)
  return Mesh(grid, (DATA_AXIS, MODEL_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  """The sharding of a value every device holds whole."""
  return NamedSharding(mesh, PartitionSpec())


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data', replicated over 'model'."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def _leaf_sharding(leaf: Any, mesh: Mesh) -> NamedSharding:
  model = mesh.shape[MODEL_AXIS]
  shape = getattr(leaf, "shape", ())
  if model > 1 and len(shape) >= 2 and shape[-1] % model == 0:
    # Output features of a kernel (and the matching optimizer moments) split over 'model'.
    return NamedSharding(mesh, PartitionSpec(*([None] * (len(shape) - 1)), MODEL_AXIS))
  return replicated(mesh)


def state_sharding(abstract_state: Any, mesh: Mesh) -> Any:
  """Shardings for every leaf of a (possibly abstract) train state.

  Args:
    abstract_state: a pytree of arrays or `jax.ShapeDtypeStruct`s.
    mesh: the run's mesh.

  Returns:
    A pytree of `NamedSharding`s of the same structure: replicated unless the mesh has
    a 'model' axis > 1, in which case kernels whose last dimension it divides are split.
  """
  return jax.tree.map(lambda leaf: _leaf_sharding(leaf, mesh), abstract_state)


def global_batch(local_batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Turns this process's part of a batch into global arrays sharded over 'data'.

  Args:
    local_batch: arrays whose leading axis holds this process's
      `global_batch // process_count` examples.
    mesh: the run's mesh.

  Returns:
    Global `jax.Array`s with leading axis `global_batch`.
  """
  sharding = batch_sharding(mesh)
  return {key: jax.make_array_from_process_local_data(sharding, np.asarray(value))
          for key, value in local_batch.items()}
