"""Attention-map figures of the main job (matplotlib imported only when drawing)."""

from __future__ import annotations

import os

import numpy as np


def save_attention_figure(path: str, image: np.ndarray, attention: np.ndarray | None,
                          box: np.ndarray | None, title: str) -> str:
  """Writes a PNG with the image and the attention overlay, the box drawn on both.

  Args:
    path: output PNG path.
    image: `(H, W, C)` image in [-1, 1].
    attention: `(H, W)` attention map, or None for a model without one.
    box: `(4,)` `(y0, x0, y1, x1)` in pixels (`y1`/`x1` exclusive), or None.
    title: figure title (e.g. the label and the prediction).

  Returns:
    `path`.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  shown = np.clip((image + 1.0) / 2.0, 0.0, 1.0)
  shown = shown[..., 0] if shown.shape[-1] == 1 else shown
  panels = 1 if attention is None else 2
  fig, axes = plt.subplots(1, panels, figsize=(3 * panels, 3.3), squeeze=False)
  for ax in axes[0]:
    ax.imshow(shown, cmap="gray", vmin=0.0, vmax=1.0)
    ax.set_axis_off()
    if box is not None:
      y0, x0, y1, x1 = (float(v) for v in box)
      # Pixel i covers [i - 0.5, i + 0.5] in imshow coordinates.
      ax.add_patch(plt.Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0,
                                 fill=False, edgecolor="lime", linewidth=1.5))
  axes[0][0].set_title("image")
  if attention is not None:
    axes[0][1].imshow(attention, cmap="jet", alpha=0.5)
    axes[0][1].set_title("attention")
  fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=80)
  plt.close(fig)
  return path
