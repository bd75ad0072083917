"""Plain NumPy loop versions of the pure functions: the independent reference for tests.

Written from the definitions, pixel by pixel and region by region, sharing no code with
the library.
"""

import math

import numpy as np


def layout(image, grid=None, size=None, stride=None, pad=False):
  """Returns (counts, size, stride) from the definitions in `regionatt_jax.region_layout`'s docstring."""
  H, W = image
  if grid is not None:
    gh, gw = grid
    h, w = (math.ceil(H / gh), math.ceil(W / gw)) if pad else (H // gh, W // gw)
    return (gh, gw), (h, w), (h, w)
  h, w = size
  sh, sw = stride or size
  if pad:
    counts = (math.ceil(max(H - h, 0) / sh) + 1, math.ceil(max(W - w, 0) / sw) + 1)
  else:
    counts = ((H - h) // sh + 1, (W - w) // sw + 1)
  return counts, (h, w), (sh, sw)


def partition(x, **kw):
  """x: (B, H, W, C) -> (B, N, h, w, C), zero outside the image."""
  B, H, W, C = x.shape
  (gh, gw), (h, w), (sh, sw) = layout((H, W), **kw)
  out = np.zeros((B, gh * gw, h, w, C), x.dtype)
  for i in range(gh):
    for j in range(gw):
      for r in range(h):
        for c in range(w):
          y, xx = i * sh + r, j * sw + c
          if y < H and xx < W:
            out[:, i * gw + j, r, c] = x[:, y, xx]
  return out


def unpartition(regions, image, **kw):
  """(B, N, h, w, C) -> (B, H, W, C): mean over the windows covering each pixel."""
  H, W = image
  (gh, gw), (h, w), (sh, sw) = layout(image, **kw)
  B, C = regions.shape[0], regions.shape[-1]
  total = np.zeros((B, H, W, C), np.float64)
  count = np.zeros((H, W))
  for i in range(gh):
    for j in range(gw):
      for r in range(h):
        for c in range(w):
          y, xx = i * sh + r, j * sw + c
          if y < H and xx < W:
            total[:, y, xx] += regions[:, i * gw + j, r, c]
            count[y, xx] += 1
  return total / np.maximum(count, 1)[None, :, :, None]


def boxes(image, **kw):
  H, W = image
  (gh, gw), (h, w), (sh, sw) = layout(image, **kw)
  out = []
  for i in range(gh):
    for j in range(gw):
      y0, x0 = i * sh, j * sw
      out.append((min(y0, H), min(x0, W), min(y0 + h, H), min(x0 + w, W)))
  return np.array(out)


def softmax(scores, mask):
  out = np.zeros_like(scores, dtype=np.float64)
  for idx in np.ndindex(scores.shape[:-1]):
    valid = [k for k in range(scores.shape[-1]) if mask[idx + (k,)]]
    if not valid:
      continue
    top = max(scores[idx + (k,)] for k in valid)
    z = sum(math.exp(scores[idx + (k,)] - top) for k in valid)
    for k in valid:
      out[idx + (k,)] = math.exp(scores[idx + (k,)] - top) / z
  return out


def sigmoid(scores, mask):
  return np.where(mask, 1 / (1 + np.exp(-scores.astype(np.float64))), 0.0)


def sparsemax(scores, mask):
  """Simplex projection by bisection on tau: sum_k max(z_k - tau, 0) = 1."""
  out = np.zeros_like(scores, dtype=np.float64)
  for idx in np.ndindex(scores.shape[:-1]):
    z = np.array([scores[idx + (k,)] for k in range(scores.shape[-1])
                  if mask[idx + (k,)]], np.float64)
    if z.size == 0:
      continue
    lo, hi = z.max() - 1, z.max()
    for _ in range(200):
      tau = (lo + hi) / 2
      if np.maximum(z - tau, 0).sum() > 1:
        lo = tau
      else:
        hi = tau
    p = iter(np.maximum(z - tau, 0))
    for k in range(scores.shape[-1]):
      if mask[idx + (k,)]:
        out[idx + (k,)] = next(p)
  return out


def identity(scores, mask):
  return np.where(mask, scores, 0.0)


NORMALIZERS = {"softmax": softmax, "sigmoid": sigmoid, "sparsemax": sparsemax,
               "none": identity}


def region_attention(x, scores_of_region, kind="softmax", mode="sum", **kw):
  """x: (B, H, W, C); scores_of_region: region (h, w, C) -> float. Loops throughout."""
  B, H, W, C = x.shape
  regions = partition(x, **kw)
  (gh, gw), (h, w), _ = layout((H, W), **kw)
  n = gh * gw
  scores = np.array([[scores_of_region(regions[b, k]) for k in range(n)]
                     for b in range(B)])
  mask = np.ones_like(scores, bool)
  if kw.get("pad"):
    has_pixels = boxes((H, W), **kw)
    mask &= ((has_pixels[:, 2] > has_pixels[:, 0]) & (has_pixels[:, 3] > has_pixels[:, 1]))
  a = NORMALIZERS[kind](scores, mask)
  weighted = np.zeros(regions.shape, np.float64)
  for b in range(B):
    for k in range(n):
      weighted[b, k] = a[b, k] * regions[b, k]
  if mode == "reassemble":
    return unpartition(weighted, (H, W), **kw), a
  y = np.zeros((B, h, w, C))
  for k in range(n):
    y += weighted[:, k]
  return (y / n if mode == "mean" else y), a
