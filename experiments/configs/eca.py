r"""Default backbone with efficient channel attention (ECA) after every stage, no region head.

  python -m experiments.train --config experiments/configs/eca.py --workdir runs/eca
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model.kwargs.attention = "eca"
  config.model.kwargs.head = None
  return config
