r"""The default backbone without attention: global average pooling, no region head (baseline).

  python -m experiments.train --config experiments/configs/plain_cnn.py --workdir runs/plain_cnn
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model.kwargs.head = None
  return config
