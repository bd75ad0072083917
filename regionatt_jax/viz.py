"""Figures of attention: the one place in the library that draws.

Every function returns a `matplotlib.figure.Figure` drawn on the Agg canvas (no pyplot,
no GUI, no global backend switch: figures are freed with their last reference), so
they work the same in scripts, tests and notebooks. matplotlib is imported only when a
function here is called; `import regionatt_jax.viz` alone does not import it.

    fig = viz.attention_figure(image, attention_map, grid=(4, 4), box=box)
    viz.save_figure(fig, "attention.png")

Conventions: images are channels-last `(H, W, C)` in [-1, 1] (the input pipeline's
`uint8 / 127.5 - 1`); attention maps are `(H, W)` at image resolution (see
`regionatt_jax.nn.attention_maps`); boxes are `(y0, x0, y1, x1)` pixels with `y1`/`x1`
exclusive (`regionatt_jax.region_boxes`). In the drawings the ground-truth box is green,
the region holding the most attention red, the region grid white.
"""

from __future__ import annotations

import os
from typing import Any, Sequence

import einops
import numpy as np

import regionatt_jax as ra

GROUND_TRUTH_COLOR = "lime"
ARGMAX_COLOR = "red"
GRID_COLOR = "white"


def _figure(width: float, height: float):
  """A new Figure on an Agg canvas."""
  from matplotlib.backends.backend_agg import FigureCanvasAgg  # pylint: disable=g-import-not-at-top
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(width, height))
  FigureCanvasAgg(fig)
  return fig


def _image_array(image, name: str = "image") -> np.ndarray:
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"{name} must be `(H, W, C)` with C in (1, 3), got shape {image.shape}")
  if not np.issubdtype(image.dtype, np.floating):
    raise TypeError(f"{name} must be float in [-1, 1], got dtype {image.dtype}")
  return image


def _map_array(attention, image_hw: tuple[int, int], name: str = "attention") -> np.ndarray:
  attention = np.asarray(attention, np.float32)
  if attention.shape != tuple(image_hw):
    raise ValueError(f"{name} must be `(H, W)` = {tuple(image_hw)} like the image, got "
                     f"shape {attention.shape}")
  return attention


def display_image(image) -> np.ndarray:
  """`(H, W, C)` in [-1, 1] -> what `imshow` shows: `(H, W)` gray or `(H, W, 3)` in [0, 1]."""
  shown = np.clip((_image_array(image).astype(np.float32) + 1.0) / 2.0, 0.0, 1.0)
  return shown[..., 0] if shown.shape[-1] == 1 else shown


def resize_map(attention, image_hw: Sequence[int]) -> np.ndarray:
  """An `(h, w)` attention map stretched to `(H, W)` by nearest neighbour, for drawing it
  on an image of another size (a model input resized from the original image).

  Each output pixel takes the map value under its centre, so region maps stay
  piecewise constant with their borders where the regions fall on the image.

  Returns:
    `(H, W)` float32.
  """
  attention = np.asarray(attention, np.float32)
  if attention.ndim != 2:
    raise ValueError(f"attention must be `(h, w)`, got shape {attention.shape}")
  height, width = (int(v) for v in image_hw)
  if min(height, width) < 1:
    raise ValueError(f"image_hw must be positive, got {tuple(image_hw)}")
  rows = ((np.arange(height) + 0.5) * attention.shape[0] / height).astype(int)
  columns = ((np.arange(width) + 0.5) * attention.shape[1] / width).astype(int)
  return attention[rows[:, None], columns[None, :]]


def argmax_region(attention, grid: Sequence[int]) -> np.ndarray:
  """The box of the grid region with the largest mean attention.

  Args:
    attention: `(H, W)` attention map; the grid must divide `H` and `W`.
    grid: `(gh, gw)` regions.

  Returns:
    `(4,)` int box `(y0, x0, y1, x1)`, `y1`/`x1` exclusive.
  """
  attention = np.asarray(attention, np.float32)
  if attention.ndim != 2:
    raise ValueError(f"attention must be `(H, W)`, got shape {attention.shape}")
  boxes = ra.region_boxes(attention.shape, tuple(grid))
  means = einops.reduce(attention, "(gh h) (gw w) -> (gh gw)", "mean",
                        gh=grid[0], gw=grid[1])
  return boxes[int(np.argmax(means))]


def _rectangle(box, color: str, linewidth: float = 1.5):
  from matplotlib.patches import Rectangle  # pylint: disable=g-import-not-at-top
  y0, x0, y1, x1 = (float(v) for v in box)
  # imshow puts pixel i's centre at i, so its edges are at i - 0.5 and i + 0.5.
  return Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                   linewidth=linewidth)


def _draw_grid(ax, image_hw: tuple[int, int], grid: Sequence[int]) -> None:
  height, width = image_hw
  for y in np.arange(1, grid[0]) * (height // grid[0]):
    ax.axhline(y - 0.5, color=GRID_COLOR, linewidth=0.5, alpha=0.6)
  for x in np.arange(1, grid[1]) * (width // grid[1]):
    ax.axvline(x - 0.5, color=GRID_COLOR, linewidth=0.5, alpha=0.6)


def draw_attention(ax, image, attention=None, *, grid: Sequence[int] | None = None,
                   box=None, title: str | None = None, alpha: float = 0.5,
                   cmap: str = "jet"):
  """Draws an image, its attention overlay, region grid, ground truth and argmax region.

  Args:
    ax: a matplotlib Axes.
    image: `(H, W, C)` image in [-1, 1].
    attention: optional `(H, W)` map, drawn over the image with `cmap` at `alpha`,
      scaled from its own minimum to its maximum.
    grid: optional `(gh, gw)`: draws the region grid and, with `attention`, a red box
      around the region with the largest mean attention.
    box: optional `(4,)` ground-truth box `(y0, x0, y1, x1)`, drawn green.
    title: optional axes title.
    alpha: opacity of the overlay.
    cmap: colormap of the overlay.

  Returns:
    `ax`.
  """
  shown = display_image(image)
  image_hw = shown.shape[:2]
  ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
  if attention is not None:
    attention = _map_array(attention, image_hw)
    ax.imshow(attention, cmap=cmap, alpha=alpha, interpolation="nearest",
              vmin=float(attention.min()), vmax=float(attention.max()))
  if grid is not None:
    _draw_grid(ax, image_hw, grid)
    if attention is not None:
      ax.add_patch(_rectangle(argmax_region(attention, grid), ARGMAX_COLOR))
  if box is not None:
    ax.add_patch(_rectangle(box, GROUND_TRUTH_COLOR))
  if title:
    ax.set_title(title, fontsize=8)
  ax.set_axis_off()
  return ax


def attention_figure(image, attention=None, *, grid: Sequence[int] | None = None,
                     box=None, title: str | None = None):
  """One example: the image with its box, and (given a map) the attention overlay.

  Args:
    image: `(H, W, C)` in [-1, 1].
    attention: optional `(H, W)` map.
    grid: optional `(gh, gw)` region grid (drawn on the overlay, with the argmax region).
    box: optional `(4,)` ground-truth box.
    title: optional figure title.

  Returns:
    A Figure with 1 panel (no map) or 2.
  """
  panels = 1 if attention is None else 2
  fig = _figure(2.6 * panels, 2.9)
  axes = fig.subplots(1, panels, squeeze=False)[0]
  draw_attention(axes[0], image, box=box, title="image")
  if attention is not None:
    draw_attention(axes[1], image, attention, grid=grid, box=box, title="attention")
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return fig


def attention_grid(images, attentions=None, *, grid: Sequence[int] | None = None,
                   boxes=None, titles: Sequence[str] | None = None, columns: int = 4):
  """A batch of overlays, one panel per example, `columns` per row.

  Args:
    images: `(B, H, W, C)` in [-1, 1].
    attentions: optional `(B, H, W)` maps.
    grid: optional `(gh, gw)` region grid.
    boxes: optional `(B, 4)` ground-truth boxes.
    titles: optional B panel titles.
    columns: panels per row.

  Returns:
    A Figure with `ceil(B / columns)` rows of panels; unused cells are blank.
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"images must be `(B, H, W, C)`, got shape {images.shape}")
  count = len(images)
  for name, values in (("attentions", attentions), ("boxes", boxes), ("titles", titles)):
    if values is not None and len(values) != count:
      raise ValueError(f"{name} must have one entry per image ({count}), got {len(values)}")
  if not isinstance(columns, int) or columns < 1:
    raise ValueError(f"columns must be a positive int, got {columns!r}")
  columns = min(columns, count)
  rows = -(-count // columns)
  fig = _figure(2.2 * columns, 2.4 * rows)
  axes = fig.subplots(rows, columns, squeeze=False).ravel()
  for i, ax in enumerate(axes):
    if i >= count:
      ax.set_axis_off()
      continue
    draw_attention(ax, images[i], None if attentions is None else attentions[i], grid=grid,
                   box=None if boxes is None else boxes[i],
                   title=None if titles is None else titles[i])
  fig.tight_layout()
  return fig


def coarser_weights(weights, grid: Sequence[int], coarse_grid: Sequence[int]) -> np.ndarray:
  """Region weights of a fine grid summed into the regions of a coarser grid.

  For coarse-to-fine attention with a sum-to-one normalizer (softmax) this recovers the
  coarse level's weights: each child's weight is its parent's times a softmax over the
  siblings, so the children of a region sum to the region's weight.

  Args:
    weights: `(..., N)` weights of `grid` (row-major).
    grid: `(gh, gw)` of `weights`.
    coarse_grid: `(ch, cw)`, dividing `grid` along both axes.

  Returns:
    `(..., ch * cw)` float32 weights.
  """
  (gh, gw), (ch, cw) = tuple(grid), tuple(coarse_grid)
  if gh % ch or gw % cw:
    raise ValueError(f"coarse_grid {tuple(coarse_grid)} must divide grid {tuple(grid)}")
  weights = np.asarray(weights, np.float32)
  if weights.shape[-1] != gh * gw:
    raise ValueError(f"weights must be `(..., {gh * gw})` for grid {tuple(grid)}, got "
                     f"shape {weights.shape}")
  return einops.reduce(weights, "... (ch fh cw fw) -> ... (ch cw)", "sum",
                       ch=ch, fh=gh // ch, cw=cw, fw=gw // cw)


def multiscale_figure(image, level_weights: Sequence[Any], grids: Sequence[Sequence[int]],
                      *, box=None, title: str | None = None):
  """The region weights of a multi-scale model, one panel per level.

  Args:
    image: `(H, W, C)` in [-1, 1]; every grid must divide `H` and `W`.
    level_weights: per level, `(N_l,)` region weights of `grids[l]` (see
      `coarser_weights` to get coarse levels from the finest).
    grids: per level, `(gh, gw)`, coarse to fine.
    box: optional ground-truth box.
    title: optional figure title.

  Returns:
    A Figure with one panel per level, each titled with its grid and largest weight.
  """
  if len(level_weights) != len(grids):
    raise ValueError(f"level_weights must have one entry per grid ({len(grids)}), got "
                     f"{len(level_weights)}")
  image_hw = _image_array(image).shape[:2]
  fig = _figure(2.4 * len(grids), 2.7)
  axes = fig.subplots(1, len(grids), squeeze=False)[0]
  for ax, weights, grid in zip(axes, level_weights, grids):
    weights = np.asarray(weights, np.float32)
    attention = np.asarray(ra.attention_map(weights, tuple(grid), image_shape=image_hw))
    draw_attention(ax, image, attention, grid=grid, box=box,
                   title=f"{grid[0]}x{grid[1]}: max weight {weights.max():.2f}")
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return fig


def bag_figure(bag, weights, *, mask=None, instance_labels=None,
               target: int | None = None, title: str | None = None):
  """The instances of a bag with their attention weights (multiple-instance learning).

  Args:
    bag: `(N, h, w, C)` instances in [-1, 1].
    weights: `(N,)` instance weights.
    mask: optional `(N,)` bool, True for real instances; padding is not drawn.
    instance_labels: optional `(N,)` int labels, shown in the panel titles.
    target: optional label whose instances get a green frame.
    title: optional figure title.

  Returns:
    A Figure with one panel per real instance; the most attended one has a red frame.
  """
  bag, weights = np.asarray(bag), np.asarray(weights, np.float32)
  if bag.ndim != 4 or weights.shape != bag.shape[:1]:
    raise ValueError(f"bag must be `(N, h, w, C)` and weights `(N,)`, got shapes "
                     f"{bag.shape} and {weights.shape}")
  keep = np.ones(len(bag), bool) if mask is None else np.asarray(mask, bool)
  indices = np.flatnonzero(keep)
  if not len(indices):
    raise ValueError("mask must keep at least one instance")
  top = indices[np.argmax(weights[indices])]
  fig = _figure(1.3 * len(indices), 1.7)
  axes = fig.subplots(1, len(indices), squeeze=False)[0]
  side = bag.shape[1:3]
  for ax, i in zip(axes, indices):
    label = "" if instance_labels is None else f"{int(instance_labels[i])}: "
    draw_attention(ax, bag[i], title=f"{label}{weights[i]:.2f}")
    if target is not None and instance_labels is not None and instance_labels[i] == target:
      ax.add_patch(_rectangle((0, 0) + tuple(side), GROUND_TRUTH_COLOR, linewidth=3))
    if i == top:
      ax.add_patch(_rectangle((1, 1, side[0] - 1, side[1] - 1), ARGMAX_COLOR, linewidth=2))
  if title:
    fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  return fig


def bar_chart(labels: Sequence[str], means, stds, *, ylabel: str,
              title: str | None = None, ylim: tuple[float, float] | None = None):
  """Vertical bars of `means` with `stds` as error bars, one bar per label.

  Args:
    labels: bar names.
    means: bar heights.
    stds: half-lengths of the error bars (e.g. the seed-to-seed standard deviation).
    ylabel: y axis label.
    title: optional title.
    ylim: optional y limits.

  Returns:
    A Figure with one Axes holding `len(labels)` bars.
  """
  means, stds = np.asarray(means, np.float64), np.asarray(stds, np.float64)
  if not len(labels) == len(means) == len(stds):
    raise ValueError(f"labels, means and stds must have the same length, got "
                     f"{len(labels)}, {len(means)}, {len(stds)}")
  fig = _figure(max(4.0, 0.55 * len(labels) + 1.5), 3.6)
  ax = fig.add_subplot()
  positions = np.arange(len(labels))
  ax.bar(positions, means, yerr=stds, capsize=3, color="tab:blue", alpha=0.8)
  ax.set_xticks(positions, labels, rotation=40, ha="right", fontsize=8)
  ax.set_ylabel(ylabel)
  if ylim is not None:
    ax.set_ylim(*ylim)
  if title:
    ax.set_title(title, fontsize=9)
  ax.grid(axis="y", alpha=0.3)
  fig.tight_layout()
  return fig


def learning_curves(curves: Sequence[tuple[str, Any, Any, Any]], *, ylabel: str,
                    xlabel: str = "step", title: str | None = None):
  """One line per curve, its mean with a band of +- its std (e.g. over seeds).

  Args:
    curves: `(label, steps, mean, std)` per curve; `steps`, `mean`, `std` of one length.
    ylabel: y axis label.
    xlabel: x axis label.
    title: optional title.

  Returns:
    A Figure with one Axes holding a line and a band per curve, and a legend.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  fig = _figure(7.0, 4.2)
  ax = fig.add_subplot()
  colors = matplotlib.colormaps["tab20"].colors
  for i, (label, steps, mean, std) in enumerate(curves):
    steps, mean, std = (np.asarray(v, np.float64) for v in (steps, mean, std))
    if not steps.shape == mean.shape == std.shape or steps.ndim != 1:
      raise ValueError(f"curve {label!r}: steps, mean and std must be 1-D of one length, "
                       f"got shapes {steps.shape}, {mean.shape}, {std.shape}")
    color = colors[i % len(colors)]
    ax.plot(steps, mean, color=color, label=label, linewidth=1.2)
    ax.fill_between(steps, mean - std, mean + std, color=color, alpha=0.2, linewidth=0)
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  if title:
    ax.set_title(title, fontsize=9)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6, loc="lower right", ncol=2)
  fig.tight_layout()
  return fig


def save_figure(fig, path: str, *, dpi: int = 80) -> str:
  """Writes `fig` as a PNG at `path` (creating its directory) and returns `path`."""
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=dpi)
  return path


def save_attention_figure(path: str, image, attention, box, title: str,
                          grid: Sequence[int] | None = None) -> str:
  """`attention_figure` written to `path`: the figures of the main job.

  Args:
    path: output PNG path.
    image: `(H, W, C)` in [-1, 1].
    attention: `(H, W)` map or None.
    box: `(4,)` box or None.
    title: figure title.
    grid: optional region grid to draw.

  Returns:
    `path`.
  """
  return save_figure(attention_figure(image, attention, grid=grid, box=box, title=title),
                     path)
