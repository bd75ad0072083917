r"""Default backbone with coordinate attention after every stage, no region head.

  python -m experiments.train --config experiments/configs/coordinate.py --workdir runs/coordinate
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model.kwargs.attention = "coordinate"
  config.model.kwargs.head = None
  return config
