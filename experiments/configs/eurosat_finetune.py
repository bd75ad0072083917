r"""ImageNet ResNet-50 + CBAM with a 2x2 region-attention head, fine-tuned on `eurosat/rgb`
(needs a GPU/TPU; not run here).

The backbone starts from torchvision's ImageNet weights; the CBAM modules inside its
blocks, the region head and the classifier start fresh, and the backbone learns at a
tenth of their learning rate. Get the weights once on a machine with internet:

  python -c "import torchvision; torchvision.models.resnet50(weights='IMAGENET1K_V2')"

which stores `~/.cache/torch/hub/checkpoints/resnet50-11ad3fa6.pth`, the default of
`model.pretrained` below (copy it to machines without internet; a timm `resnet50`
`state_dict`, e.g. a `model.safetensors` from the Hugging Face Hub, works too). Then

  python -m experiments.train --config experiments/configs/eurosat_finetune.py \
      --workdir runs/eurosat_finetune --config.model.pretrained=/path/to/resnet50.pth

About 30 epochs of the 21.6k training images. The 64x64 images leave a 2x2 feature map
after the ImageNet stem's and the stages' 32x downsampling, hence the 2x2 grid.
"""

from experiments.configs import common

#: Where `torchvision.models.resnet50(weights="IMAGENET1K_V2")` caches its weights.
TORCHVISION_RESNET50 = "~/.cache/torch/hub/checkpoints/resnet50-11ad3fa6.pth"


def finetune_config(dataset: str, grid: tuple[int, int], steps: int):
  """The ResNet recipe (`common.resnet18_recipe`) with ResNet-50 + CBAM from
  `TORCHVISION_RESNET50`, a region head on `grid`, a tenth of its learning rate, and the
  backbone at 0.1x that."""
  config = common.resnet18_recipe(dataset, steps, arg=None)
  config.model.kwargs.backbone = "resnet50"
  config.model.kwargs.backbone_kwargs = {"stem": "imagenet"}
  config.model.kwargs.attention = "cbam"
  config.model.kwargs.head_kwargs = {"grid": grid}
  config.model.pretrained = TORCHVISION_RESNET50
  config.train.eval_every = config.train.checkpoint_every = 1000
  config.optim.learning_rate = 0.01 * config.train.global_batch_size / 256
  config.optim.backbone_lr_multiplier = 0.1
  config.optim.weight_decay = 1e-4
  config.optim.warmup_steps = 200
  return config


def get_config():
  return finetune_config("eurosat/rgb", grid=(2, 2), steps=5000)
