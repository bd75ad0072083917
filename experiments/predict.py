r"""Classify your own images with a trained model and draw where it attends.

  python -m experiments.predict --workdir runs/default IMAGE_OR_DIR... [--out DIR] \
      [--top_k 3]
  python -m experiments.predict --exported model.jaxexport IMAGE_OR_DIR...

The model comes from a training workdir (its latest readable checkpoint, via
`regionatt_jax.train.load`) or from an artifact of `experiments.export`. Inputs are PNG
or JPEG files, or directories whose PNG/JPEG files are all taken; grayscale or RGB, any
size. Each image is read upright (EXIF orientation), converted to the model's channels,
resized to its input size and scaled to [-1, 1] as in training
(`regionatt_jax.train.inference.model_input`).

For each image it prints one line, `path: class (probability), ...` with the `--top_k`
most probable classes, and writes `OUT/<name>_attention.png`: the original image and
the model's attention map drawn over it (`regionatt_jax.viz`). A progress bar on
stderr counts the images when there is more than one batch. An input that cannot be
used (missing, not an image, damaged, unreadable, a directory without images) gets a
one-line error on stderr naming it; the other images are still processed and the exit
status is 1. A model that cannot be loaded ends the command with status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Iterable, Sequence

import numpy as np

from regionatt_jax.train import inference

PROG = "predict"


@dataclasses.dataclass(frozen=True)
class ModelSource:
  """A model as predict uses it.

  Attributes:
    sample_shape: `(H, W, C)` of one input image.
    infer: `(B, H, W, C)` float32 in [-1, 1] -> `(logits (B, K), maps (B, H, W) or None)`.
  """
  sample_shape: tuple[int, int, int]
  infer: inference.InferFn


def from_workdir(workdir: str) -> ModelSource:
  """The model of a training workdir, at its latest readable checkpoint."""
  model, variables, sample_shape = inference.load_image_model(workdir)
  return ModelSource(sample_shape, inference.inference_function(model, variables))


def from_exported(path: str) -> ModelSource:
  """The inference function of an `experiments.export` artifact."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax import export as jax_export  # pylint: disable=g-import-not-at-top
  try:
    with open(path, "rb") as f:
      blob = f.read()
  except OSError as error:
    raise OSError(f"{path}: cannot read ({error.strerror or error})") from None
  try:
    exported = jax_export.deserialize(blob)
  except Exception as error:  # pylint: disable=broad-except
    # Any byte string that is not one fails somewhere in the flatbuffer reader.
    raise ValueError(f"{path}: not a jax.export artifact ({type(error).__name__})") from None
  shapes = [aval.shape for aval in exported.in_avals]
  if len(shapes) != 1 or len(shapes[0]) != 4:
    raise ValueError(f"{path}: takes inputs of shapes {shapes}, not one batch of images "
                     f"(b, H, W, C)")
  sample_shape = tuple(int(v) for v in shapes[0][1:])
  try:  # Lowering (no compilation) checks that it runs on this platform.
    jax.jit(exported.call).lower(jax.ShapeDtypeStruct((1, *sample_shape), np.float32))
  except ValueError as error:
    raise ValueError(f"{path}: {error}") from None
  return ModelSource(sample_shape, exported.call)


def _error(message: str) -> None:
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  tqdm.write(f"{PROG}: error: {message}", file=sys.stderr)  # above a progress bar


def _expand(inputs: Iterable[str]) -> tuple[list[str], int]:
  """Files of the inputs (directories expanded) and the number of inputs that failed."""
  files, failures = [], 0
  for path in inputs:
    try:
      files += inference.image_files(path)
    except (OSError, ValueError) as error:
      _error(str(error))
      failures += 1
  return files, failures


def top_classes(logits: np.ndarray, k: int) -> list[tuple[int, float]]:
  """The `k` most probable classes of one `(K,)` logits row, with softmax probabilities."""
  logits = np.asarray(logits, np.float64)
  probabilities = np.exp(logits - logits.max())
  probabilities /= probabilities.sum()
  order = np.argsort(-probabilities, kind="stable")[:k]
  return [(int(c), float(probabilities[c])) for c in order]


def _overlay_path(out_dir: str, path: str, taken: set[str]) -> str:
  """`out_dir/<stem>_attention.png`, numbered when two inputs share a stem."""
  stem = os.path.splitext(os.path.basename(path))[0]
  name, count = f"{stem}_attention.png", 1
  while name in taken:
    count += 1
    name = f"{stem}_{count}_attention.png"
  taken.add(name)
  return os.path.join(out_dir, name)


def _save_overlay(path: str, image: np.ndarray, attention, title: str) -> None:
  from regionatt_jax import viz  # pylint: disable=g-import-not-at-top
  shown = image.astype(np.float32) / 127.5 - 1.0
  attention = None if attention is None else viz.resize_map(attention, image.shape[:2])
  viz.save_attention_figure(path, shown, attention, None, title)


def _batches(items: Sequence[str], size: int) -> Iterable[Sequence[str]]:
  for start in range(0, len(items), size):
    yield items[start:start + size]


def predict_files(files: Sequence[str], source: ModelSource, *, out_dir: str, top_k: int,
                  batch_size: int) -> int:
  """Prints the top classes of each file and writes its overlay; returns the failures.

  Batches are padded to `batch_size`, so the model compiles for one shape.
  """
  from tqdm import tqdm  # pylint: disable=g-import-not-at-top
  failures, taken = 0, set()
  progress = tqdm(total=len(files), unit="image", file=sys.stderr, dynamic_ncols=True,
                  disable=len(files) <= batch_size)
  for batch_files in _batches(files, batch_size):
    originals, inputs, paths = [], [], []
    for path in batch_files:
      try:
        image = inference.read_image(path)
      except (OSError, ValueError) as error:
        _error(str(error))
        failures += 1
        progress.update(1)
        continue
      originals.append(image)
      inputs.append(inference.model_input(image, source.sample_shape))
      paths.append(path)
    if not paths:
      continue
    padded = np.zeros((batch_size,) + source.sample_shape, np.float32)
    padded[:len(inputs)] = inputs
    logits, maps = source.infer(padded)
    logits = np.asarray(logits)
    maps = None if maps is None else np.asarray(maps)
    for i, path in enumerate(paths):
      best = top_classes(logits[i], top_k)
      progress.write(f"{path}: " + ", ".join(f"{c} ({p:.3f})" for c, p in best),
                     file=sys.stdout)
      title = f"{os.path.basename(path)}: class {best[0][0]} ({best[0][1]:.2f})"
      _save_overlay(_overlay_path(out_dir, path, taken), originals[i],
                    None if maps is None else maps[i], title)
      progress.update(1)
  progress.close()
  return failures


def _positive_int(text: str) -> int:
  value = int(text)
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
  return value


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n")[0])
  model = parser.add_mutually_exclusive_group(required=True)
  model.add_argument("--workdir", help="a training workdir (its latest readable checkpoint)")
  model.add_argument("--exported", help="an artifact written by experiments.export")
  parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR")
  parser.add_argument("--out", default="predictions", help="directory of the overlay PNGs")
  parser.add_argument("--top_k", type=_positive_int, default=3, help="classes printed per image")
  parser.add_argument("--batch_size", type=_positive_int, default=32)
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  model_path = args.workdir or args.exported
  try:
    source = from_workdir(args.workdir) if args.workdir else from_exported(args.exported)
  except (OSError, ValueError) as error:
    message = str(error)
    _error(message if model_path in message else f"{model_path}: {message}")
    return 2
  files, failures = _expand(args.inputs)
  if files:
    os.makedirs(args.out, exist_ok=True)
    failures += predict_files(files, source, out_dir=args.out, top_k=args.top_k,
                              batch_size=args.batch_size)
  return 1 if failures else 0


if __name__ == "__main__":
  sys.exit(main())
