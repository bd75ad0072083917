"""Cutting images into regions and putting them back.

An image or feature map `(..., H, W, C)` is cut either into a grid of `gh x gw`
non-overlapping regions (`grid=`) or into windows of `size=(h, w)` every
`stride=(sh, sw)` pixels, which may overlap (`size=`, `stride=`). Regions come out as
`(..., N, h, w, C)` with `N = gh * gw` in row-major order. With `pad=True`, an image whose
size the layout does not divide is zero-padded at the bottom and right;
`region_mask` says which pixels of each region are real.

Everything about a layout is static (Python ints), so these functions trace to plain
reshapes, gathers and scatters under `jit`, `vmap` and `grad`.
"""

from typing import NamedTuple

import einops
import jax.numpy as jnp
import numpy as np

from regionatt_jax import _checks


class RegionLayout(NamedTuple):
  """Where the regions of an image lie. All fields are pairs (rows, columns).

  Attributes:
    image: `(H, W)` size of the image before padding.
    counts: `(gh, gw)` number of regions along each axis; `N = gh * gw`.
    size: `(h, w)` size of one region.
    stride: `(sh, sw)` offset between neighbouring regions; equal to `size` for a grid.
  """
  image: tuple[int, int]
  counts: tuple[int, int]
  size: tuple[int, int]
  stride: tuple[int, int]

  @property
  def num_regions(self) -> int:
    return self.counts[0] * self.counts[1]

  @property
  def padded(self) -> tuple[int, int]:
    """`(Hp, Wp)`: the image size after padding, covered exactly by the regions."""
    return tuple((n - 1) * st + sz for n, st, sz in zip(self.counts, self.stride, self.size))

  @property
  def is_grid(self) -> bool:
    """True when regions tile the padded image without overlap or gaps."""
    return self.stride == self.size


def layout_arguments(grid=None, *, size=None, stride=None, pad: bool = False):
  """Checks the layout arguments on their own, before any image is known.

  Args:
    grid, size, stride, pad: as in `region_layout`.

  Returns:
    `(grid, size, stride)` as pairs of ints: `(grid, None, None)` for a grid,
    `(None, size, stride)` for windows, with `stride` defaulting to `size`.
  """
  _checks.boolean(pad, "pad")
  if (grid is None) == (size is None):
    raise ValueError(
        f"give exactly one of grid= or size=, got grid={grid!r}, size={size!r}")
  if grid is not None:
    if stride is not None:
      raise ValueError(f"stride= goes with size=, not grid=; got stride={stride!r}")
    return _checks.int_pair(grid, "grid"), None, None
  size = _checks.int_pair(size, "size")
  return None, size, size if stride is None else _checks.int_pair(stride, "stride")


def region_layout(image_shape, grid=None, *, size=None, stride=None,
                  pad: bool = False) -> RegionLayout:
  """Computes where the regions of an image lie.

  Args:
    image_shape: `(H, W)` of the image (extra leading or trailing entries are not
      allowed: pass `x.shape[-3:-1]`).
    grid: `(gh, gw)` non-overlapping regions; exclusive with `size`.
    size: `(h, w)` window size for sliding windows.
    stride: `(sh, sw)` window step; defaults to `size` (non-overlapping windows).
    pad: if False, the layout must cover the image exactly; if True, the image is
      (conceptually) zero-padded at the bottom/right until it does.

  Returns:
    A `RegionLayout`.
  """
  if not isinstance(image_shape, (tuple, list, np.ndarray)):
    raise TypeError(f"image_shape must be a pair (H, W) of ints, got {image_shape!r}")
  image = _checks.int_pair(image_shape, "image_shape")
  grid, size, stride = layout_arguments(grid, size=size, stride=stride, pad=pad)
  if grid is not None:
    counts = grid
    for axis, (n, length) in enumerate(zip(counts, image)):
      if n > length:
        raise ValueError(
            f"grid {counts} is larger than the image {image} along axis {axis}: "
            f"need grid <= image size")
      if length % n and not pad:
        raise ValueError(
            f"grid {counts} does not divide the image {image} (axis {axis}: {length} % "
            f"{n} = {length % n}); pass pad=True or a grid that divides {length}")
    size = tuple(-(-length // n) for n, length in zip(counts, image))
    return RegionLayout(image, counts, size, size)

  counts = []
  for axis, (length, sz, st) in enumerate(zip(image, size, stride)):
    if pad:
      counts.append(-(-max(length - sz, 0) // st) + 1)
      continue
    if sz > length:
      raise ValueError(
          f"size {size} is larger than the image {image} along axis {axis}; "
          f"pass pad=True or a smaller size")
    if (length - sz) % st:
      raise ValueError(
          f"windows of size {size} and stride {stride} do not cover the image {image} "
          f"exactly (axis {axis}: ({length} - {sz}) % {st} != 0); pass pad=True")
    counts.append((length - sz) // st + 1)
  return RegionLayout(image, tuple(counts), size, stride)


def _image(x, name: str):
  return _checks.float_array(x, name, min_rank=3)


def pad_image(x, layout: RegionLayout):
  """Zero-pads `(..., H, W, C)` at the bottom/right to `layout.padded`."""
  (h, w), (hp, wp) = layout.image, layout.padded  # a layout never ends inside the image
  if (hp, wp) == (h, w):
    return x
  return jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [(0, hp - h), (0, wp - w), (0, 0)])


def _window_index(layout: RegionLayout):
  """Row and column indices `(gh, 1, h, 1)` and `(1, gw, 1, w)` of every window pixel."""
  (gh, gw), (h, w), (sh, sw) = layout.counts, layout.size, layout.stride
  rows = (np.arange(gh) * sh)[:, None] + np.arange(h)
  cols = (np.arange(gw) * sw)[:, None] + np.arange(w)
  return rows[:, None, :, None], cols[None, :, None, :]


def partition(x, grid=None, *, size=None, stride=None, pad: bool = False):
  """Cuts an image into regions.

  For a grid this is a reshape and a transpose; overlapping windows are gathered.

  Args:
    x: `(..., H, W, C)` image or feature map, floating point.
    grid, size, stride, pad: the layout, as in `region_layout`.

  Returns:
    `(..., N, h, w, C)` regions in row-major order; padded pixels are zero.
  """
  x = _image(x, "x")
  layout = region_layout(x.shape[-3:-1], grid, size=size, stride=stride, pad=pad)
  x = pad_image(x, layout)
  gh, gw = layout.counts
  if layout.is_grid:
    return einops.rearrange(x, "... (gh h) (gw w) c -> ... (gh gw) h w c", gh=gh, gw=gw)
  rows, cols = _window_index(layout)
  windows = x[..., rows, cols, :]  # (..., gh, gw, h, w, C)
  return windows.reshape(windows.shape[:-5] + (gh * gw,) + windows.shape[-3:])


def _check_regions(regions, layout: RegionLayout, name: str):
  expected = (layout.num_regions,) + layout.size
  if tuple(regions.shape[-4:-1]) != expected:
    raise ValueError(
        f"{name} must have shape (..., N, h, w, C) = (..., {expected[0]}, {expected[1]}, "
        f"{expected[2]}, C) for layout {layout}, got {tuple(regions.shape)}")


def unpartition(regions, grid=None, *, size=None, stride=None, image_shape=None,
                pad: bool = False):
  """Puts regions back into an image: the inverse of `partition`.

  Where windows overlap, the image pixel is the mean of the windows that cover it;
  pixels that no window covers are zero.

  Args:
    regions: `(..., N, h, w, C)` regions in row-major order.
    grid, size, stride, pad: the layout, as in `region_layout`.
    image_shape: `(H, W)` of the image to rebuild. Optional for a grid without padding
      (then `(gh * h, gw * w)`); required otherwise.

  Returns:
    `(..., H, W, C)` image.
  """
  return _unpartition(regions, "regions", grid, size=size, stride=stride,
                      image_shape=image_shape, pad=pad)


def _unpartition(regions, name: str, grid=None, *, size=None, stride=None,
                 image_shape=None, pad: bool = False):
  """`unpartition`, with errors about `regions` naming it `name`."""
  regions = _checks.float_array(regions, name, min_rank=4)
  _checks.boolean(pad, "pad")
  if image_shape is None:
    if grid is None or pad:
      raise ValueError(
          "image_shape is required to unpartition windows (size=) or padded regions; "
          "got image_shape=None")
    gh, gw = _checks.int_pair(grid, "grid")
    image_shape = (gh * regions.shape[-3], gw * regions.shape[-2])
  layout = region_layout(image_shape, grid, size=size, stride=stride, pad=pad)
  _check_regions(regions, layout, name)
  (gh, gw), (hp, wp), (h, w) = layout.counts, layout.padded, layout.image
  if layout.is_grid:
    image = einops.rearrange(regions, "... (gh gw) h w c -> ... (gh h) (gw w) c",
                             gh=gh, gw=gw)
  else:
    rows, cols = _window_index(layout)
    windows = regions.reshape(regions.shape[:-4] + (gh, gw) + regions.shape[-3:])
    lead = regions.shape[:-4]
    image = jnp.zeros(lead + (hp, wp, regions.shape[-1]), regions.dtype)
    image = image.at[..., rows, cols, :].add(windows)
    coverage = np.zeros((hp, wp), np.int32)
    np.add.at(coverage, (rows, cols), 1)
    image = image / np.maximum(coverage, 1)[:, :, None].astype(regions.dtype)
  return image[..., :h, :w, :]


def region_mask(image_shape, grid=None, *, size=None, stride=None,
                pad: bool = False) -> np.ndarray:
  """Which pixels of each region are image pixels rather than padding.

  Args:
    image_shape: `(H, W)`.
    grid, size, stride, pad: the layout, as in `region_layout`.

  Returns:
    `(N, h, w)` boolean NumPy array (static, usable as a constant under `jit`).
    `mask.any(axis=(-2, -1))` is the `(N,)` mask of regions that hold any image pixel.
  """
  layout = region_layout(image_shape, grid, size=size, stride=stride, pad=pad)
  rows, cols = _window_index(layout)
  valid = (rows < layout.image[0]) & (cols < layout.image[1])  # (gh, gw, h, w)
  return valid.reshape((layout.num_regions,) + layout.size)


def region_boxes(image_shape, grid=None, *, size=None, stride=None,
                 pad: bool = False) -> np.ndarray:
  """Pixel boxes of the regions, clipped to the image.

  Args:
    image_shape: `(H, W)`.
    grid, size, stride, pad: the layout, as in `region_layout`.

  Returns:
    `(N, 4)` int32 NumPy array of `(y0, x0, y1, x1)`, `y1`/`x1` exclusive, row-major.
    A region made only of padding has an empty box (`y0 == y1` or `x0 == x1`).
  """
  layout = region_layout(image_shape, grid, size=size, stride=stride, pad=pad)
  (gh, gw), (h, w), (sh, sw), (hi, wi) = (layout.counts, layout.size, layout.stride,
                                          layout.image)
  y0, x0 = np.meshgrid(np.arange(gh) * sh, np.arange(gw) * sw, indexing="ij")
  boxes = np.stack([np.minimum(y0, hi), np.minimum(x0, wi),
                    np.minimum(y0 + h, hi), np.minimum(x0 + w, wi)], axis=-1)
  return boxes.reshape(-1, 4).astype(np.int32)


def attention_map(weights, grid=None, *, size=None, stride=None, image_shape,
                  pad: bool = False):
  """Paints region weights back onto the image plane.

  Args:
    weights: `(..., N)` region weights (or scores).
    grid, size, stride, pad: the layout, as in `region_layout`.
    image_shape: `(H, W)` of the image the regions came from.

  Returns:
    `(..., H, W)` map: each pixel holds the weight of its region, or the mean weight of
    the windows covering it where windows overlap.
  """
  weights = _checks.float_array(weights, "weights", min_rank=1)
  layout = region_layout(image_shape, grid, size=size, stride=stride, pad=pad)
  if weights.shape[-1] != layout.num_regions:
    raise ValueError(
        f"weights must have shape (..., N) with N = {layout.num_regions} regions for "
        f"layout {layout}, got {tuple(weights.shape)}")
  painted = jnp.broadcast_to(weights[..., None, None, None],
                             weights.shape + layout.size + (1,))
  return unpartition(painted, grid, size=size, stride=stride, image_shape=image_shape,
                     pad=pad)[..., 0]
