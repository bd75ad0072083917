r"""Region attention head (4x4 grid) with the `recurrent` scorer instead of the default MLP.

  python -m experiments.train --config experiments/configs/region_recurrent.py --workdir runs/region_recurrent
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model.kwargs.head_kwargs = {"scorer": "recurrent"}
  return config
