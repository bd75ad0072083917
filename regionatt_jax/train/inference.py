"""A trained model outside the training loop: its inference function, a portable
`jax.export` artifact of it, and image files turned into model input.

    model, variables, sample_shape = inference.load_image_model("runs/default")
    infer = inference.inference_function(model, variables)
    logits, maps = infer(images)        # (B, K) float32, (B, H, W) float32 or None

    exported = inference.export_inference(model, variables, sample_shape)
    open("model.jaxexport", "wb").write(exported.serialize())

The artifact needs neither this library nor the model's code, only JAX (see
`export_inference`):

    exported = jax.export.deserialize(open("model.jaxexport", "rb").read())
    logits, maps = exported.call(images)            # any batch size

Images on disk: `read_image(path)` reads a PNG or JPEG as it is (`(H, W, 1)` or
`(H, W, 3)` uint8), `model_input(image, (H, W, C))` makes it what the model was trained
on. Pillow is imported only when an image is read.

This module is imported on demand: `import regionatt_jax` does not import it.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from typing import Any, Mapping

import jax
import numpy as np
from jax import export as jax_export

from regionatt_jax.train import step as step_lib

#: Platforms an exported artifact runs on by default: any JAX backend a user may have.
PLATFORMS = ("cpu", "cuda", "tpu")
#: Every platform `jax.export` lowers for.
EXPORT_PLATFORMS = ("cpu", "cuda", "rocm", "tpu")
#: File name suffixes `image_files` looks for in a directory (any case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")

InferFn = Callable[[Any], tuple[jax.Array, "jax.Array | None"]]


def _model_output(model, variables: Mapping[str, Any], images):
  return step_lib.infer(model.apply, variables, images)


def load_image_model(workdir: str) -> tuple[Any, dict[str, Any], tuple[int, int, int]]:
  """`(model, variables, sample_shape)` of a workdir's latest readable checkpoint.

  `sample_shape` is the `(H, W, C)` of the images of the dataset it was trained on.

  Raises:
    ValueError: the workdir has no readable checkpoint, or its model takes bags.
  """
  from regionatt_jax import data, train  # pylint: disable=g-import-not-at-top
  model, variables, config = train.load(workdir)
  spec = data.dataset_spec(config.dataset.name)
  if spec.max_bag_size:
    raise ValueError(f"{workdir}: its model classifies bags of {spec.name}, not images")
  return model, variables, tuple(spec.image_shape)


def inference_function(model, variables: Mapping[str, Any]) -> InferFn:
  """The jitted inference of a trained model: images -> logits and attention maps.

  Args:
    model: a Flax module called as `model.apply(variables, x, train=False)`.
    variables: its `{"params": ..., "batch_stats": ...}`.

  Returns:
    `infer(images)`: `(B, H, W, C)` float32 in [-1, 1] -> `(logits, maps)`, logits
    `(B, K)` float32 and maps `(B, H, W)` float32 at image resolution (None for a model
    without an attention map). Variables are arguments of the compiled function, not
    constants baked into it.
  """
  apply = jax.jit(functools.partial(_model_output, model))
  return lambda images: apply(variables, images)


def export_inference(model, variables: Mapping[str, Any], sample_shape: Sequence[int], *,
                     platforms: Sequence[str] = PLATFORMS) -> jax_export.Exported:
  """`inference_function` as a `jax.export` artifact with a symbolic batch size.

  The variables are constants of the artifact, so `exported.call(images)` is all a user
  needs: `jax.export.deserialize(exported.serialize())` restores it in any process whose
  JAX is within `jax.export`'s compatibility window (see its documentation). Lowered for
  several platforms, the artifact carries each platform's form of the library's
  platform-dependent kernels, and only the form of the platform it is called on is
  compiled.

  Args:
    model: a Flax module.
    variables: its variables.
    sample_shape: `(H, W, C)` of one input image.
    platforms: JAX platforms to lower for (`"cpu"`, `"cuda"`, `"rocm"`, `"tpu"`).

  Returns:
    The `Exported` of `images (b, H, W, C) float32 -> (logits (b, K), maps (b, H, W))`
    (`maps` is None for a model without an attention map).
  """
  sample_shape = tuple(int(v) for v in sample_shape)
  if not sample_shape or min(sample_shape) < 1:
    raise ValueError(f"sample_shape must be positive sizes (H, W, C), got {sample_shape}")
  if (not platforms or isinstance(platforms, str)
      or not set(platforms) <= set(EXPORT_PLATFORMS)):
    raise ValueError(f"platforms must be a non-empty sequence of names from "
                     f"{EXPORT_PLATFORMS}, got {platforms!r}")
  batch, = jax_export.symbolic_shape("b")
  images = jax.ShapeDtypeStruct((batch, *sample_shape), np.float32)
  infer = jax.jit(functools.partial(_model_output, model, variables))
  return jax_export.export(infer, platforms=tuple(platforms))(images)


def image_files(path: str) -> list[str]:
  """`path` itself, or the PNG/JPEG files directly inside the directory `path`, sorted.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: `path` is a directory without PNG/JPEG files.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file or directory")
  if not os.path.isdir(path):
    return [path]
  found = sorted(os.path.join(path, name) for name in os.listdir(path)
                 if name.lower().endswith(IMAGE_SUFFIXES)
                 and os.path.isfile(os.path.join(path, name)))
  if not found:
    raise ValueError(f"{path}: directory has no PNG or JPEG images "
                     f"({', '.join(IMAGE_SUFFIXES)})")
  return found


def read_image(path: str) -> np.ndarray:
  """A PNG or JPEG file as uint8 pixels, upright (EXIF orientation applied).

  Grayscale files (8- or 16-bit, with or without alpha) give `(H, W, 1)`, every other
  mode (RGB, RGBA, palette, CMYK) `(H, W, 3)`; alpha is dropped and 16-bit values keep
  their 8 high bits.

  Raises:
    ValueError: `path` is not an image Pillow can decode, or is truncated.
    OSError: `path` cannot be read (permissions, a directory).
  """
  from PIL import Image, ImageOps, UnidentifiedImageError  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as image:
      image = ImageOps.exif_transpose(image)
      image.load()
  except UnidentifiedImageError:
    raise ValueError(f"{path}: not an image (PNG or JPEG expected)") from None
  except SyntaxError as error:  # Pillow's error for a corrupt header
    raise ValueError(f"{path}: damaged image ({error})") from None
  except OSError as error:
    if "truncated" in str(error) or "broken" in str(error):
      raise ValueError(f"{path}: damaged image ({error})") from None
    raise OSError(f"{path}: cannot read ({error.strerror or error})") from None
  if image.mode in ("I", "I;16", "I;16B", "I;16L"):
    pixels = (np.asarray(image).astype(np.uint32) >> 8).clip(0, 255).astype(np.uint8)
  elif image.mode in ("1", "L", "LA", "La", "F"):
    pixels = np.asarray(image.convert("L"))
  else:
    pixels = np.asarray(image.convert("RGB"))
  return pixels.reshape(pixels.shape[:2] + (-1,))


def model_input(image: np.ndarray, sample_shape: Sequence[int]) -> np.ndarray:
  """An image as the model was trained on it: resized, channels matched, in [-1, 1].

  The whole image is resized to the model's `(H, W)` (aspect ratio not kept; Pillow's
  bilinear filter, which averages over the source pixels when shrinking); an RGB image
  becomes gray for a 1-channel model (ITU-R 601-2 luma, Pillow's "L") and a gray one is
  repeated into 3 channels for an RGB model; pixels map to `uint8 / 127.5 - 1`, as in
  the input pipeline.

  Args:
    image: `(H0, W0, 1 or 3)` uint8, e.g. from `read_image`.
    sample_shape: the model's `(H, W, C)`, C in (1, 3).

  Returns:
    `(H, W, C)` float32 in [-1, 1].
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  height, width, channels = (int(v) for v in sample_shape)
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"image must be (H, W, 1 or 3) uint8, got shape {image.shape} and "
                     f"dtype {image.dtype}")
  if channels not in (1, 3):
    raise ValueError(f"sample_shape must end in 1 or 3 channels, got {tuple(sample_shape)}")
  pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
  pil = pil.convert("L" if channels == 1 else "RGB").resize((width, height),
                                                            Image.Resampling.BILINEAR)
  pixels = np.asarray(pil, np.float32).reshape(height, width, channels)
  return pixels / 127.5 - 1.0
