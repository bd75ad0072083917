r"""ImageNet ResNet-50 + CBAM with a 3x3 region-attention head, fine-tuned on
`patch_camelyon` (needs a GPU/TPU; not run here).

The recipe and the pretrained file of `eurosat_finetune.py` (see there how to get it):

  python -m experiments.train --config experiments/configs/patch_camelyon_finetune.py \
      --workdir runs/patch_camelyon_finetune --config.model.pretrained=/path/to/resnet50.pth

About 5 epochs of the 262k training patches; flips in both axes. The 96x96 patches leave
a 3x3 feature map, hence the 3x3 grid.
"""

from experiments.configs import eurosat_finetune


def get_config():
  return eurosat_finetune.finetune_config("patch_camelyon", grid=(3, 3), steps=10000)
