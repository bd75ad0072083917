"""Tests of regionatt_jax.viz: what the figures contain, read back from the artists and
from the rendered pixels, against NumPy loop references and matplotlib's colormaps."""

import subprocess
import sys

import matplotlib
import numpy as np
import pytest

from regionatt_jax import viz


def _argmax_region_loop(attention, grid):
  """Reference: the box of the region with the largest mean, by explicit loops."""
  height, width = attention.shape
  h, w = height // grid[0], width // grid[1]
  best, best_box = -np.inf, None
  for i in range(grid[0]):
    for j in range(grid[1]):
      mean = attention[i * h:(i + 1) * h, j * w:(j + 1) * w].mean()
      if mean > best:
        best, best_box = mean, (i * h, j * w, (i + 1) * h, (j + 1) * w)
  return np.array(best_box)


def _rendered(fig):
  """`(H, W, 3)` uint8 pixels of the figure, row 0 at the top."""
  fig.canvas.draw()
  return np.asarray(fig.canvas.buffer_rgba())[..., :3]


def _pixel(fig, ax, x, y):
  """The rendered colour at data coordinates (x, y) of `ax`."""
  display_x, display_y = ax.transData.transform((x, y))
  pixels = _rendered(fig)
  return pixels[pixels.shape[0] - int(round(display_y)), int(round(display_x))].astype(int)


def _reddest_near(fig, ax, x, y, radius=2):
  """The most red rendered colour within `radius` display pixels of data point (x, y)."""
  display_x, display_y = ax.transData.transform((x, y))
  pixels = _rendered(fig).astype(int)
  row, col = pixels.shape[0] - int(round(display_y)), int(round(display_x))
  patch = pixels[row - radius:row + radius + 1, col - radius:col + radius + 1].reshape(-1, 3)
  return patch[np.argmax(patch[:, 0] - patch[:, 1] - patch[:, 2])]


def _patches(ax, color):
  rgba = matplotlib.colors.to_rgba(color)
  return [p for p in ax.patches if np.allclose(p.get_edgecolor(), rgba)]


@pytest.mark.parametrize("shape,grid", [((64, 64), (4, 4)), ((32, 48), (2, 3)),
                                        ((12, 12), (1, 1)), ((16, 8), (4, 2))])
def test_argmax_region_matches_loop_reference(shape, grid):
  rng = np.random.default_rng(sum(shape) + sum(grid))
  for _ in range(5):
    attention = rng.random(shape).astype(np.float32)
    np.testing.assert_array_equal(viz.argmax_region(attention, grid),
                                  _argmax_region_loop(attention, grid))


def test_overlay_pixels_are_the_colormap_blended_over_the_image():
  # A black image (-1) under a map that is 1 on region (1, 2) of a 4x4 grid, 0 elsewhere:
  # with alpha 0.5 each pixel is 0.5 * jet(value) over black.
  image = -np.ones((64, 64, 1), np.float32)
  attention = np.zeros((64, 64), np.float32)
  attention[16:32, 32:48] = 1.0
  fig = viz.attention_figure(image, attention, grid=(4, 4))
  overlay_ax = fig.axes[1]
  jet = matplotlib.colormaps["jet"]
  hot = np.array(jet(1.0)[:3]) * 0.5 * 255
  cold = np.array(jet(0.0)[:3]) * 0.5 * 255
  np.testing.assert_allclose(_pixel(fig, overlay_ax, 40, 24), hot, atol=3)
  np.testing.assert_allclose(_pixel(fig, overlay_ax, 8, 56), cold, atol=3)
  # The plain image panel shows black there.
  np.testing.assert_allclose(_pixel(fig, fig.axes[0], 40, 24), 0, atol=3)


def test_argmax_region_and_ground_truth_are_drawn_where_they_belong():
  rng = np.random.default_rng(0)
  image = rng.uniform(-1, 1, (64, 64, 1)).astype(np.float32)
  attention = rng.random((64, 64)).astype(np.float32)
  attention[48:64, 0:16] += 5.0  # region (3, 0) wins
  box = np.array([5.0, 30.0, 25.0, 50.0])
  fig = viz.attention_figure(image, attention, grid=(4, 4), box=box)
  ax = fig.axes[1]
  (red,) = _patches(ax, viz.ARGMAX_COLOR)
  assert red.get_xy() == (-0.5, 47.5) and red.get_width() == 16 and red.get_height() == 16
  (green,) = _patches(ax, viz.GROUND_TRUTH_COLOR)
  assert green.get_xy() == (29.5, 4.5) and green.get_width() == 20
  assert green.get_height() == 20
  # The image panel has the box but no argmax region and no overlay.
  assert not _patches(fig.axes[0], viz.ARGMAX_COLOR)
  assert len(_patches(fig.axes[0], viz.GROUND_TRUTH_COLOR)) == 1
  assert len(fig.axes[0].images) == 1 and len(ax.images) == 2
  np.testing.assert_array_equal(ax.images[1].get_array(), attention)


def test_argmax_region_is_rendered_red_on_its_edges_only():
  from matplotlib.backends.backend_agg import FigureCanvasAgg
  from matplotlib.figure import Figure
  fig = Figure(figsize=(4, 4))
  FigureCanvasAgg(fig)
  ax = fig.add_subplot()
  attention = np.zeros((64, 64), np.float32)
  attention[48:64, 0:16] = 1.0
  # A gray colormap over a black image: nothing is red but the argmax box.
  viz.draw_attention(ax, -np.ones((64, 64, 1), np.float32), attention, grid=(4, 4),
                     cmap="gray")
  red = lambda rgb: rgb[0] > 150 and rgb[1] < 60 and rgb[2] < 60
  assert red(_reddest_near(fig, ax, 8, 47.5))  # middle of its top edge
  assert red(_reddest_near(fig, ax, 15.5, 56))  # middle of its right edge
  assert not red(_reddest_near(fig, ax, 8, 56))  # its centre
  assert not red(_reddest_near(fig, ax, 40, 31.5))  # an edge of another region
def test_gray_image_is_shown_in_unit_range():
  image = np.linspace(-1, 1, 16, dtype=np.float32).reshape(4, 4, 1)
  np.testing.assert_allclose(viz.display_image(image), (image[..., 0] + 1) / 2)
  rgb = np.full((2, 2, 3), 2.0, np.float32)  # out of range: clipped
  assert viz.display_image(rgb).shape == (2, 2, 3) and viz.display_image(rgb).max() == 1.0


def test_attention_figure_without_map_has_one_panel():
  fig = viz.attention_figure(np.zeros((8, 8, 1), np.float32), box=(0, 0, 4, 4))
  assert len(fig.axes) == 1 and len(fig.axes[0].images) == 1


def test_attention_grid_has_one_panel_per_example():
  rng = np.random.default_rng(1)
  images = rng.uniform(-1, 1, (5, 16, 16, 1)).astype(np.float32)
  maps = rng.random((5, 16, 16)).astype(np.float32)
  boxes = np.tile([0.0, 0.0, 8.0, 8.0], (5, 1))
  fig = viz.attention_grid(images, maps, grid=(2, 2), boxes=boxes,
                           titles=[f"t{i}" for i in range(5)], columns=2)
  drawn = [ax for ax in fig.axes if ax.images]
  assert len(fig.axes) == 6 and len(drawn) == 5  # 3 rows of 2, the last cell blank
  for i, ax in enumerate(drawn):
    assert ax.get_title() == f"t{i}"
    np.testing.assert_array_equal(ax.images[1].get_array(), maps[i])
    (red,) = _patches(ax, viz.ARGMAX_COLOR)
    y0, x0, _, _ = _argmax_region_loop(maps[i], (2, 2))
    assert red.get_xy() == (x0 - 0.5, y0 - 0.5)


def _hierarchical_softmax_weights(rng):
  """Coarse-to-fine weights over 1x1, 2x2, 4x4 grids, built by explicit loops.

  Returns the per-level weights; a 4x4 region's weight is its 2x2 parent's weight times
  a softmax over the parent's 4 children.
  """
  softmax = lambda s: np.exp(s - s.max()) / np.exp(s - s.max()).sum()
  level2 = softmax(rng.normal(size=4))
  level4 = np.zeros(16)
  for pi in range(2):
    for pj in range(2):
      children = [(2 * pi + a) * 4 + (2 * pj + b) for a in range(2) for b in range(2)]
      level4[children] = level2[pi * 2 + pj] * softmax(rng.normal(size=4))
  return [np.ones(1), level2, level4]


def test_coarser_weights_recover_the_coarse_levels():
  levels = _hierarchical_softmax_weights(np.random.default_rng(2))
  np.testing.assert_allclose(viz.coarser_weights(levels[2], (4, 4), (2, 2)), levels[1],
                             rtol=1e-6)
  np.testing.assert_allclose(viz.coarser_weights(levels[2], (4, 4), (1, 1)), levels[0],
                             rtol=1e-6)
  batch = np.stack([levels[2], levels[2][::-1]])
  assert viz.coarser_weights(batch, (4, 4), (2, 2)).shape == (2, 4)


def test_multiscale_figure_paints_each_level_on_its_grid():
  levels = _hierarchical_softmax_weights(np.random.default_rng(3))
  grids = [(1, 1), (2, 2), (4, 4)]
  image = np.zeros((32, 32, 1), np.float32)
  fig = viz.multiscale_figure(image, levels, grids, box=(0, 0, 8, 8))
  assert len(fig.axes) == 3
  for ax, weights, grid in zip(fig.axes, levels, grids):
    side = 32 // grid[0]
    painted = np.kron(weights.reshape(grid), np.ones((side, side)))
    np.testing.assert_allclose(ax.images[1].get_array(), painted, rtol=1e-6)
    assert ax.get_title().startswith(f"{grid[0]}x{grid[1]}")


def test_bag_figure_frames_targets_and_the_most_attended_instance():
  bag = np.zeros((6, 8, 8, 1), np.float32)
  weights = np.array([0.1, 0.5, 0.1, 0.2, 0.9, 0.0])  # index 4 is padding
  mask = np.array([True, True, True, True, False, False])
  labels = np.array([3, 9, 9, 1, -1, -1])
  fig = viz.bag_figure(bag, weights, mask=mask, instance_labels=labels, target=9)
  assert len(fig.axes) == 4  # real instances only
  red = [i for i, ax in enumerate(fig.axes) if _patches(ax, viz.ARGMAX_COLOR)]
  green = [i for i, ax in enumerate(fig.axes) if _patches(ax, viz.GROUND_TRUTH_COLOR)]
  assert red == [1] and green == [1, 2]
  assert fig.axes[3].get_title() == "1: 0.20"


def test_bar_chart_heights_and_error_bars():
  means, stds = np.array([0.5, 0.7, 0.6]), np.array([0.1, 0.02, 0.0])
  fig = viz.bar_chart(["a", "b", "c"], means, stds, ylabel="accuracy")
  ax = fig.axes[0]
  np.testing.assert_allclose([bar.get_height() for bar in ax.patches], means)
  (container,) = [c for c in ax.containers if hasattr(c, "has_yerr")]
  segments = container.lines[2][0].get_segments()
  np.testing.assert_allclose([s[1, 1] - s[0, 1] for s in segments], 2 * stds)
  assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b", "c"]


def test_learning_curves_draw_each_mean_with_its_band():
  steps = np.array([100, 200, 300])
  fig = viz.learning_curves([("a", steps, [0.2, 0.5, 0.6], [0.1, 0.0, 0.05]),
                             ("b", steps, [0.3, 0.4, 0.7], [0.0, 0.0, 0.0])],
                            ylabel="val accuracy")
  ax = fig.axes[0]
  assert [line.get_label() for line in ax.lines] == ["a", "b"]
  np.testing.assert_allclose(ax.lines[0].get_ydata(), [0.2, 0.5, 0.6])
  band = ax.collections[0].get_paths()[0].vertices  # the polygon between the edges
  assert band[:, 1].max() == pytest.approx(0.65) and band[:, 1].min() == pytest.approx(0.1)
  with pytest.raises(ValueError, match="one length"):
    viz.learning_curves([("c", steps, [0.1, 0.2], [0, 0])], ylabel="y")


def test_save_figure_writes_a_png(tmp_path):
  path = viz.save_attention_figure(str(tmp_path / "sub" / "f.png"),
                                   np.zeros((8, 8, 1), np.float32),
                                   np.eye(8, dtype=np.float32), (0, 0, 2, 2), "t", grid=(2, 2))
  with open(path, "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("call,argument", [
    (lambda: viz.attention_figure(np.zeros((8, 8), np.float32)), "image"),
    (lambda: viz.attention_figure(np.zeros((8, 8, 1), np.uint8)), "image"),
    (lambda: viz.attention_figure(np.zeros((8, 8, 1), np.float32), np.zeros((4, 4))),
     "attention"),
    (lambda: viz.argmax_region(np.zeros((2, 8, 8)), (2, 2)), "attention"),
    (lambda: viz.attention_grid(np.zeros((2, 8, 8, 1)), np.zeros((3, 8, 8))), "attentions"),
    (lambda: viz.attention_grid(np.zeros((2, 8, 8, 1)), columns=0), "columns"),
    (lambda: viz.coarser_weights(np.zeros(16), (4, 4), (3, 3)), "coarse_grid"),
    (lambda: viz.coarser_weights(np.zeros(8), (4, 4), (2, 2)), "weights"),
    (lambda: viz.multiscale_figure(np.zeros((8, 8, 1)), [np.ones(1)], [(1, 1), (2, 2)]),
     "level_weights"),
    (lambda: viz.bag_figure(np.zeros((3, 8, 8, 1)), np.zeros(2)), "weights"),
    (lambda: viz.bag_figure(np.zeros((2, 8, 8, 1)), np.zeros(2), mask=np.zeros(2, bool)),
     "mask"),
    (lambda: viz.bar_chart(["a"], [1.0, 2.0], [0.0, 0.0], ylabel="y"), "labels"),
])
def test_bad_input_names_the_argument(call, argument):
  with pytest.raises((ValueError, TypeError), match=argument):
    call()


def test_importing_viz_does_not_import_matplotlib():
  code = "import sys, regionatt_jax.viz; print('matplotlib' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       check=True).stdout
  assert out.strip() == "False"
