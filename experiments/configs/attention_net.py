r"""The seed network `AttentionNet` (conv 3->64->128, sigmoid 1x1 attention map).

  python -m experiments.train --config experiments/configs/attention_net.py --workdir runs/attention_net
"""

from experiments.configs import default


def get_config():
  config = default.get_config()
  config.model.name = "AttentionNet"
  config.model.kwargs = {}
  return config
