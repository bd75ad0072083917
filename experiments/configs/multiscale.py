r"""Multi-scale region attention head (1x1, 2x2, 4x4 grids, coarse-to-fine).

  python -m experiments.train --config experiments/configs/multiscale.py --workdir runs/multiscale
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model.kwargs.head = "multiscale"
  return config
