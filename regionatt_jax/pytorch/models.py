"""The PyTorch version of `AttentionNet`, the region-attention block and a classifier.

Each module mirrors its Flax counterpart in `regionatt_jax.nn` layer by layer, and its
submodules carry the Flax submodule names (`conv_0`, `bn_0`, `head.scorer.hidden_0`,
...) so that `regionatt_jax.pytorch.convert` maps a `state_dict` onto the Flax variable
tree by name alone. Images are NCHW, as PyTorch users write them; the region-attention
head works channels-last `(B, H, W, C)`, like the JAX library, and the classifier
permutes its feature map once before the head.
"""

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn import functional as F

#: How `region_attention` combines the weighted regions (both give the same values):
#: "einsum" over the transposed regions `(B, N, h, w, C)`, or "multiply_sum", a broadcast
#: multiply and a sum over the grid axes of the free reshape `(B, gh, h, gw, w, C)`.
FORMS = ("einsum", "multiply_sum")


def partition(x: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
  """Cuts `(B, H, W, C)` into row-major regions `(B, gh*gw, H//gh, W//gw, C)`."""
  b, height, width, c = x.shape
  gh, gw = grid
  if height % gh or width % gw:
    raise ValueError(f"grid {grid} must divide the feature map (H, W) = {(height, width)}")
  blocks = x.reshape(b, gh, height // gh, gw, width // gw, c)
  return blocks.permute(0, 1, 3, 2, 4, 5).reshape(b, gh * gw, height // gh, width // gw, c)


def region_attention(x: torch.Tensor, score_fn: Callable[[torch.Tensor], torch.Tensor],
                     grid: tuple[int, int], form: str = "einsum",
                     temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
  """`I_att = sum_i softmax(f(R))_i R_i` over a grid of regions.

  Args:
    x: `(B, H, W, C)` feature map.
    score_fn: regions `(B, N, h, w, C)` -> scores `(B, N)`.
    grid: `(gh, gw)`.
    form: one of `FORMS`.
    temperature: scores are divided by it before the softmax.

  Returns:
    `(y, a)`: `(B, h, w, C)` attended output and `(B, N)` weights.
  """
  if form not in FORMS:
    raise ValueError(f"form must be one of {FORMS}, got {form!r}")
  regions = partition(x, grid)
  weights = torch.softmax(score_fn(regions) / temperature, dim=-1)
  if form == "einsum":
    return torch.einsum("bn,bnhwc->bhwc", weights, regions), weights
  b, height, width, c = x.shape
  gh, gw = grid
  blocks = x.reshape(b, gh, height // gh, gw, width // gw, c)
  return (blocks * weights.reshape(b, gh, 1, gw, 1, 1)).sum(dim=(1, 3)), weights


class AttentionNet(nn.Module):
  """`regionatt_jax.nn.AttentionNet`: two 3x3 convs, a sigmoid attention map, global mean
  pool, BatchNorm, Linear classifier.

  Args:
    num_classes: number of classes.
    in_channels: image channels.
    features: widths of the two 3x3 convs.
  """

  def __init__(self, num_classes: int, in_channels: int = 3,
               features: Sequence[int] = (64, 128)):
    super().__init__()
    widths = (in_channels, *features)
    for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
      self.add_module(f"conv_{i}", nn.Conv2d(cin, cout, 3, padding=1))
    self.num_convs = len(features)
    self.attention = nn.Conv2d(features[-1], 1, 1)
    # Flax momentum 0.9 keeps 0.9 of the old statistics; PyTorch's 0.1 is the new share.
    self.norm = nn.BatchNorm1d(features[-1], eps=1e-5, momentum=0.1)
    self.classifier = nn.Linear(features[-1], num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Args: x: `(B, C, H, W)` images. Returns: `(B, num_classes)` logits."""
    for i in range(self.num_convs):
      x = F.relu(getattr(self, f"conv_{i}")(x))
    x = x * torch.sigmoid(self.attention(x))
    return self.classifier(self.norm(x.mean(dim=(2, 3))))


class MLPScorer(nn.Module):
  """`regionatt_jax.nn.MLPScorer` with `pool="mean"`: `MLP(mean_hw(R_i))`.

  Args:
    channels: region channels C.
    hidden: widths of the hidden layers (ReLU after each).
  """

  def __init__(self, channels: int, hidden: Sequence[int] = (64,)):
    super().__init__()
    widths = (channels, *hidden)
    for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
      self.add_module(f"hidden_{i}", nn.Linear(cin, cout))
    self.num_hidden = len(hidden)
    self.out = nn.Linear(widths[-1], 1)

  def forward(self, regions: torch.Tensor) -> torch.Tensor:
    """Args: regions: `(B, N, h, w, C)`. Returns: `(B, N)` scores."""
    h = regions.mean(dim=(-3, -2))
    for i in range(self.num_hidden):
      h = F.relu(getattr(self, f"hidden_{i}")(h))
    return self.out(h)[..., 0]


class RegionAttention(nn.Module):
  """`regionatt_jax.nn.RegionAttention(grid, normalize="softmax", aggregate="sum")`.

  Args:
    channels: feature channels C (for the default scorer).
    grid: `(gh, gw)`.
    scorer: regions `(B, N, h, w, C)` -> `(B, N)` (default `MLPScorer(channels)`).
    form: one of `FORMS`.
  """

  def __init__(self, channels: int, grid: tuple[int, int] = (4, 4),
               scorer: nn.Module | None = None, form: str = "einsum"):
    super().__init__()
    self.grid = tuple(grid)
    self.form = form
    self.scorer = scorer if scorer is not None else MLPScorer(channels)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Args: x: `(B, H, W, C)`. Returns: `(B, H/gh, W/gw, C)`."""
    return region_attention(x, self.scorer, self.grid, self.form)[0]


class SmallCNN(nn.Module):
  """`regionatt_jax.nn.SmallCNN(batch_norm=True, attention=None)`: conv-BN-ReLU stages,
  2x2 max pool between them.

  Args:
    in_channels: image channels.
    features: width of each stage.
  """

  def __init__(self, in_channels: int = 3, features: Sequence[int] = (32, 64, 128)):
    super().__init__()
    widths = (in_channels, *features)
    for i, (cin, cout) in enumerate(zip(widths, widths[1:])):
      self.add_module(f"conv_{i}", nn.Conv2d(cin, cout, 3, padding=1, bias=False))
      # Flax momentum 0.9 keeps 0.9 of the old statistics; PyTorch's 0.1 is the new share.
      self.add_module(f"bn_{i}", nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1))
    self.num_stages = len(features)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Args: x: `(B, C, H, W)`. Returns: `(B, F, H/2^(S-1), W/2^(S-1))`."""
    for i in range(self.num_stages):
      x = F.relu(getattr(self, f"bn_{i}")(getattr(self, f"conv_{i}")(x)))
      if i < self.num_stages - 1:
        x = F.max_pool2d(x, 2)
    return x


class RegionAttentionClassifier(nn.Module):
  """`regionatt_jax.nn.RegionAttentionClassifier(num_classes)` in its default configuration:
  `SmallCNN` backbone with BatchNorm, no stage attention, a `RegionAttention` head on a
  4x4 grid with the default `MLPScorer`, softmax, sum, then global mean and a Linear.

  Args:
    num_classes: number of classes.
    in_channels: image channels.
    features: backbone stage widths.
    grid: region grid of the head.
    form: one of `FORMS` for the head.
    head: False for no head (global mean of the backbone's features), as
      `RegionAttentionClassifier(num_classes, head=None)`.
  """

  def __init__(self, num_classes: int, in_channels: int = 3,
               features: Sequence[int] = (32, 64, 128), grid: tuple[int, int] = (4, 4),
               form: str = "einsum", head: bool = True):
    super().__init__()
    self.backbone = SmallCNN(in_channels, features)
    self.head = RegionAttention(features[-1], grid, form=form) if head else None
    self.classifier = nn.Linear(features[-1], num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Args: x: `(B, C, H, W)` images. Returns: `(B, num_classes)` logits."""
    features = self.backbone(x).permute(0, 2, 3, 1)
    if self.head is not None:
      features = self.head(features)
    return self.classifier(features.mean(dim=(1, 2)))
