r"""Default backbone with CBAM (channel then spatial attention) after every stage, no region head.

  python -m experiments.train --config experiments/configs/cbam.py --workdir runs/cbam
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model.kwargs.attention = "cbam"
  config.model.kwargs.head = None
  return config
