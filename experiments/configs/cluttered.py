r"""The cluttered-digits family: `default.py` with another attention, head, scorer or canvas.

  python -m experiments.train --workdir runs/cbam \
      --config experiments/configs/cluttered.py:attention=cbam,head=none

Args (after ':', comma-separated `key=value`; none gives `default.py`):
  canvas: the `cluttered_digits` config: "64" (default), "64_heavy", "64_clean", "128",
    "128_heavy", "128_clean". A 128 canvas gets a fifth backbone stage (16-16-32-64-64),
    so that the head again sees an 8x8 map.
  attention: in every backbone stage: "se", "eca", "cbam", "coordinate" ('' none).
  placement: where that attention sits (`SmallCNN.placement`): "path" (default: after
    the stage's conv-BN-ReLU, on the network's only signal path) or "residual" (each
    stage a residual block, the attention on its branch before the add, as published).
  head: "region" (4x4 grid, the default), "multiscale" (1x1, 2x2, 4x4 grids,
    coarse-to-fine) or "none" (global average pooling: the plain CNN).
  scorer: the region scorer: "mlp" (the head's default), "conv", "gated", "recurrent",
    "self_attention".
  model: "classifier" (`RegionAttentionClassifier`, default) or "attention_net" (the
    seed network `AttentionNet`: conv 3->64->128, sigmoid 1x1 attention map; it takes
    no attention, head or scorer).
  features: channels per stage, e.g. "16-32-64" (default: by canvas for the
    classifier, the published 64-128 for `AttentionNet`).

Examples: `attention=se,head=none` (SE), `head=none` (plain CNN), `scorer=gated`,
`placement=residual,attention=cbam,head=none` (CBAM as published),
`head=multiscale`, `model=attention_net`, `canvas=128,attention=cbam,head=none`.
"""

from experiments.configs import common
from experiments.configs import default
from regionatt_jax.nn.models import PLACEMENTS

#: Backbone channels per stage by canvas side: an 8x8 map at the last stage.
_FEATURES = {64: (16, 32, 64, 64), 128: (16, 16, 32, 64, 64)}


def _features(text: str) -> tuple[int, ...]:
  return tuple(int(n) for n in text.split("-"))


def get_config(arg=None):
  """`default.get_config()` changed by `arg` (see the module docstring)."""
  args = common.parse_arg(arg, canvas="64", model="classifier", features="",
                          placement="path", **common.MODEL_ARGS)
  side = int(args.canvas.split("_")[0]) if args.canvas[:1].isdigit() else None
  if side not in _FEATURES:
    raise ValueError(f"config arg canvas must start with one of {sorted(_FEATURES)} "
                     f"(a cluttered_digits config), got {args.canvas!r}")
  config = default.get_config()
  config.dataset.name = f"cluttered_digits/{args.canvas}"
  if args.model == "attention_net":
    if (args.attention, args.head, args.scorer, args.placement) != ("", "region", "", "path"):
      raise ValueError(f"config args attention, head, scorer, placement are for "
                       f"model=classifier; model=attention_net got {arg!r}")
    config.model.name = "AttentionNet"
    config.model.kwargs = {"features": _features(args.features)} if args.features else {}
  elif args.model == "classifier":
    config.model.kwargs.backbone_kwargs.features = (
        _features(args.features) if args.features else _FEATURES[side])
    if args.placement not in PLACEMENTS:
      raise ValueError(f"config arg placement must be one of {PLACEMENTS}, got "
                       f"{args.placement!r}")
    if args.placement != "path":  # 'path' is the backbone's default: default.py unchanged.
      config.model.kwargs.backbone_kwargs.placement = args.placement
    common.set_model_args(config, args)
  else:
    raise ValueError(f"config arg model must be 'classifier' or 'attention_net', got "
                     f"{args.model!r}")
  return config
