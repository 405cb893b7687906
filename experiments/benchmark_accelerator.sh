#!/usr/bin/env bash
# The first measurement on a GPU or TPU, as one command (docs/performance.md):
#
#     bash experiments/benchmark_accelerator.sh [OUT_DIR]     # default: bench_accelerator/
#
# Runs, on the default JAX backend, each result in OUT_DIR and a summary on stdout:
#   1. the training step of YOLOv4 at 608 (80 classes): one micro-batch of 8 in float32 and in
#      bfloat16, then the paper's update (64 images in 8 micro-batches) in bfloat16;
#   2. the forward pass of yolov4, yolov4-tiny and yolov4-csp at 416 and 608, batches 1, 8, 32,
#      in float32 and in bfloat16;
#   3. the host input pipeline (one worker process) at 608 on the embedded dataset, which says
#      how many `data.workers` it takes to feed the measured step.
# A GPU/TPU build of jax must be installed (see setup.cfg). Nothing here is CPU-specific; on a
# CPU it runs too, but takes hours.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench_accelerator}
mkdir -p "$OUT"
PY=${PYTHON:-python}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$PWD/.cache/jax}

$PY -c "import jax; print('devices:', jax.devices())" | tee "$OUT/devices.txt"
for dtype in float32 bfloat16; do
  $PY experiments/benchmark_train.py --config configs/yolov4_coco.py --size 608 --batch 8 \
    --subdivisions 1 --dtype "$dtype" --steps 10 | tee "$OUT/train_608_b8_$dtype.json"
done
$PY experiments/benchmark_train.py --config configs/yolov4_coco.py --size 608 --batch 64 \
  --subdivisions 8 --dtype bfloat16 --steps 5 | tee "$OUT/train_608_b64_s8_bfloat16.json"
for dtype in float32 bfloat16; do
  $PY experiments/benchmark_models.py --sizes 416,608 --batches 1,8,32 --dtype "$dtype" \
    --repeats 20 --out "$OUT/forward_$dtype.md"
done
$PY experiments/benchmark_data.py --sizes 608 --batches 30 | tee "$OUT/input_pipeline.txt"
echo "results in $OUT/"
