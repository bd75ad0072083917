#!/usr/bin/env bash
# The accelerator numbers BENCHMARKS.md does not have yet, in one short run on a GPU or
# TPU machine (jax[cuda12] or jax[tpu], then `pip install -e ".[data,plots,test]"`; see
# README "On TPU / GPU"):
#
#   bash experiments/accelerator_check.sh [OUT_DIR]
#
# 1. the cross-platform lowering tests, which also compile the default model's train
#    step for this device (no per-tap loop may reach it);
# 2. the JAX rows of experiments.benchmark (Conv and flax.linen.Conv, both cases,
#    batch 8 and 32), tagged with the platform, into OUT_DIR (default: a temp dir) and a
#    section of OUT_DIR/BENCHMARKS.md to copy into the repository's;
# 3. 200 steps of the main job in bfloat16, whose summary.json gives images/s.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out="${1:-$(mktemp -d)}"
mkdir -p "$out"
platform="$(python -c 'import jax; print(jax.default_backend())')"
if [[ "$platform" == cpu ]]; then
  echo "accelerator_check: JAX sees no GPU or TPU (devices: $(python -c 'import jax; print(jax.devices())'))" >&2
  exit 1
fi
export JAX_COMPILATION_CACHE_DIR="$out/jax_cache"

python -m pytest -q tests/test_platforms.py

cp BENCHMARKS.md "$out/BENCHMARKS.md"
python -m experiments.benchmark --frameworks jax jax_flax_conv --allocators default \
    --batch-sizes 8 32 --tag "$platform" --out-dir "$out" --markdown "$out/BENCHMARKS.md"

python -m experiments.train --config experiments/configs/default.py --workdir "$out/run" \
    --config.train.steps=200 --config.train.compute_dtype=bfloat16 \
    --config.train.eval_batch_size=256 \
    --config.train.progress_bar=False --config.train.num_figures=0
echo "accelerator_check: results in $out"
