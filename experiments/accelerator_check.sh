#!/usr/bin/env bash
# The accelerator numbers BENCHMARKS.md does not have yet, in one short run on a GPU or
# TPU machine (jax[cuda12] or jax[tpu] installed, see README "On TPU / GPU"):
#
#   bash experiments/accelerator_check.sh [OUT_DIR]
#
# 1. the cross-platform lowering tests, then the default model's train step compiled
#    for this device: no per-tap loop in the compiled executable;
# 2. the JAX rows of experiments/benchmark.py (Conv and flax.linen.Conv, both cases,
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
python - <<'EOF'
import re
import jax
import jax.numpy as jnp
from experiments.configs import default
from regionatt_jax import train

config = default.get_config()
model = train.build_model(config, num_classes=10)
state = train.create_train_state(config, model, jax.random.PRNGKey(0), (64, 64, 64, 1))
batch = {"image": jnp.zeros((64, 64, 64, 1)), "label": jnp.zeros((64,), jnp.int32)}
hlo = jax.jit(train.train_step).lower(state, batch).compile().as_text()
loops = len(re.findall(r" while\(", hlo))
print(f"{jax.devices()[0].device_kind}: compiled train step has {loops} while loops")
assert loops == 0, "the per-tap weight gradient reached the accelerator"
EOF

cp BENCHMARKS.md "$out/BENCHMARKS.md"
python experiments/benchmark.py --frameworks jax jax_flax_conv --allocators default \
    --batch-sizes 8 32 --tag "$platform" --out-dir "$out" --markdown "$out/BENCHMARKS.md"

python -m experiments.train --config experiments/configs/default.py --workdir "$out/run" \
    --config.train.steps=200 --config.train.compute_dtype=bfloat16 \
    --config.train.eval_batch_size=256 \
    --config.train.progress_bar=False --config.train.num_figures=0
echo "accelerator_check: results in $out"
