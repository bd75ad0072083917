r"""Default backbone with squeeze-and-excitation after every stage, no region head.

  python -m experiments.train --config experiments/configs/se.py --workdir runs/se
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model.kwargs.attention = "se"
  config.model.kwargs.head = None
  return config
