#!/usr/bin/env bash
# The GPU measurements behind docs/speed.md, as one script (a benchmark, not a test).
#   benchmarks/gpu_suite.sh DATA_DIR OUT_DIR
# DATA_DIR: a prepared ci corpus (`tianci prepare`); OUT_DIR receives the logs and JSON.
set -uo pipefail
DATA=${1:?data dir}; OUT=${2:?out dir}; mkdir -p "$OUT"
export PYTHONPATH=${PYTHONPATH:-}:$(dirname "$0")/../src PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
if [ -z "${SKIP_CHECKS:-}" ]; then
echo "== correctness of the fast paths on CUDA"
$PY "$(dirname "$0")/cuda_check.py" 2>&1 | tee "$OUT/cuda_check.log"
echo "== tianci bench (ci-gpu: training fast/classic/tutorial, decoding)"
$PY -m tianci bench --preset ci-gpu --decode-preset ci-gpu --steps 20 --rounds 3 --decode-compile --json "$OUT/bench_ci_gpu.json" \
  2>&1 | tee "$OUT/bench_ci_gpu.log"
fi
echo "== ci-gpu, 120 s on the GPU (bf16 autocast, compiled)"
$PY -m tianci train --preset ci-gpu --data "$DATA" --out /tmp/gpu_run --force --max-time 120 --compile \
  --eval-interval 250 --no-progress 2>&1 | tail -4 | tee "$OUT/train_ci_gpu.log"
cp /tmp/gpu_run/metrics.jsonl "$OUT/train_ci_gpu_metrics.jsonl" 2>/dev/null
echo "== torchrun launcher on CUDA (1 process; resume)"
$PY -m torch.distributed.run --standalone --nproc_per_node=1 -m tianci train --preset ci-gpu --data "$DATA" \
  --out /tmp/gpu_ddp --force --max-iters 40 --eval-interval 20 --no-progress 2>&1 | tail -1 | tee "$OUT/torchrun.log"
$PY -m torch.distributed.run --standalone --nproc_per_node=1 -m tianci train --preset ci-gpu --data "$DATA" \
  --resume /tmp/gpu_ddp --max-iters 60 --eval-interval 20 --no-progress 2>&1 | tail -1 | tee -a "$OUT/torchrun.log"
