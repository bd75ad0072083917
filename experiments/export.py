r"""Export a trained model's inference function as a portable `jax.export` artifact.

  python -m experiments.export --workdir runs/default --out model.jaxexport \
      [--platforms cpu,cuda,tpu]

The artifact maps images `(b, H, W, C)` float32 in [-1, 1] (any batch size b) to logits
`(b, K)` and attention maps `(b, H, W)`, with the checkpoint's variables inside. Load
it in any JAX program, without this library (`regionatt_jax.train.inference.export_inference`
says more):

    exported = jax.export.deserialize(open("model.jaxexport", "rb").read())
    logits, maps = exported.call(images)

or classify image files with `python -m experiments.predict --exported model.jaxexport`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from regionatt_jax.train import inference


def _platforms(text: str) -> tuple[str, ...]:
  platforms = tuple(p.strip() for p in text.split(",") if p.strip())
  unknown = set(platforms) - set(inference.EXPORT_PLATFORMS)
  if not platforms or unknown:
    raise argparse.ArgumentTypeError(
        f"need names from {', '.join(inference.EXPORT_PLATFORMS)}, got {text!r}")
  return platforms


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="export", description=__doc__.split("\n")[0])
  parser.add_argument("--workdir", required=True, help="a training workdir")
  parser.add_argument("--out", required=True, help="the artifact file to write")
  parser.add_argument("--platforms", type=_platforms, default=inference.PLATFORMS,
                      help=f"comma-separated JAX platforms to run on, of "
                      f"{', '.join(inference.EXPORT_PLATFORMS)}")
  return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    model, variables, sample_shape = inference.load_image_model(args.workdir)
    exported = inference.export_inference(model, variables, sample_shape,
                                          platforms=args.platforms)
  except (OSError, ValueError) as error:
    message = str(error)
    named = message if args.workdir in message else f"{args.workdir}: {message}"
    print(f"export: error: {named}", file=sys.stderr)
    return 2
  blob = exported.serialize()
  with open(args.out, "wb") as f:
    f.write(blob)
  outputs = ", ".join(str(aval.str_short()) for aval in exported.out_avals)
  print(f"wrote {args.out} ({len(blob)} bytes): images {exported.in_avals[0].str_short()} "
        f"-> {outputs}; platforms {', '.join(exported.platforms)}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
