r"""Region attention head (4x4 grid) with the `gated` scorer instead of the default MLP.

  python -m experiments.train --config experiments/configs/region_gated.py --workdir runs/region_gated
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model.kwargs.head_kwargs = {"scorer": "gated"}
  return config
