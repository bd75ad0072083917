r"""Region attention head (4x4 grid) with the `conv` scorer instead of the default MLP.

  python -m experiments.train --config experiments/configs/region_conv.py --workdir runs/region_conv
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model.kwargs.head_kwargs = {"scorer": "conv"}
  return config
