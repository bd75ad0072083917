"""`CheckedModule`: a Linen module that checks its attributes when it is constructed."""

import flax.linen as nn


class CheckedModule(nn.Module):
  """Base of the library's Linen modules: construction calls `_check_attributes(self)`.

  Each subclass defines the static `_check_attributes(a)`, which checks `a.<name>` for
  each attribute and raises `TypeError`/`ValueError` naming it, so that a bad argument is
  reported where the module is built, not deep inside tracing. `a` is the module itself
  or, for its Flax NNX twin, the same-named constructor arguments
  (`regionatt_jax.nnx.layers.check_like`).
  """

  def __post_init__(self):
    self._check_attributes(self)
    super().__post_init__()

  @staticmethod
  def _check_attributes(a) -> None:
    """Raises for a bad attribute `a.<name>`; a module with no attributes to check."""
    del a
