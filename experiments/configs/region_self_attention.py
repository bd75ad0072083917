r"""Region attention head (4x4 grid) with the `self_attention` scorer instead of the default MLP.

  python -m experiments.train --config experiments/configs/region_self_attention.py --workdir runs/region_self_attention
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model.kwargs.head_kwargs = {"scorer": "self_attention"}
  return config
