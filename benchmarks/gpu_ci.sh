#!/usr/bin/env bash
# The GPU measurements behind docs/speed.md's ci-gpu time to val 3.98 and docs/own-text.md's classical
# pretraining at GPU scale, as one script (a benchmark, not a test; one lent H200, ~8 minutes).
#   benchmarks/gpu_ci.sh DATA_ROOT OUT_DIR
# DATA_ROOT holds ci/ (`tianci prepare`) and classical/ (`tianci prepare --corpus classical`), and for
# compose-eval cipu/ and rhyme/ (the 词谱 and rhyme tables); OUT_DIR receives the logs and JSON.
#   1. ci-gpu alone on the GPU, compiled, STEPS steps: the time to val 3.98 (compilation reported apart);
#   2. at equal steps, classical pretraining for PRE (and PRE2) steps + fine-tuning on ci for the rest,
#      both arms side by side (eager: the comparison is by steps, not seconds);
#   3. compose-eval (critic off: one draft a poem) of the ci-only model and of each fine-tuned one.
# PARTS picks the parts (default 123). On an H200 part 1 took 295 s (77 s of it compilation) and parts
# 2-3 did not fit in the 15-minute lease after it: run PARTS=23 alone in a later lease.
set -uo pipefail
ROOT=${1:?data root}; DEST=${2:?out dir}; mkdir -p "$DEST"
STEPS=${STEPS:-5000}; PRE=${PRE:-2500}; PRE2=${PRE2:-3750}; DEVICE=${DEVICE:-cuda}; K=${K:-10}
PRESET=${PRESET:-ci-gpu}; TOP=${TOP:-30}  # tests/test_gpu_script.py: a tiny preset on the CPU
PARTS=${PARTS:-123}; COMPILE=${COMPILE:---compile}; WORK=${WORK:-/tmp/gpu_ci}; EVAL_TIMEOUT=${EVAL_TIMEOUT:-240}
OUT=$WORK/logs; rm -rf "$WORK"; mkdir -p "$OUT"
# everything goes back as one archive, refreshed after each part (a call returns only a few files)
pack() { tar czf "$DEST/gpu_ci.tgz" -C "$OUT" .; }
export PYTHONPATH=${PYTHONPATH:-}:$(cd "$(dirname "$0")/../src" && pwd) PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
T="$PY -m tianci train --device $DEVICE --no-progress ${EXTRA:-}"  # EXTRA: more train flags (a CPU pilot)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

if [[ $PARTS == *1* ]]; then
echo "== 1. $PRESET, $STEPS steps, alone on the device ($COMPILE)"
s=$(date +%s)
$T --preset "$PRESET" --data "$ROOT/ci" --out "$WORK/ci" --force --max-iters "$STEPS" --eval-interval 250 $COMPILE \
  > "$OUT/ci.log" 2>&1
echo "wall $(( $(date +%s) - s )) s (process start to exit)" | tee -a "$OUT/ci.log"
tail -2 "$OUT/ci.log"; cp "$WORK/ci/metrics.jsonl" "$OUT/metrics_ci.jsonl"; pack
fi

# compose-eval with the critic off (one draft a poem); on the device, or on the CPU if that fails at once
ce() {
  local dev
  for dev in "$DEVICE" cpu; do
    OMP_NUM_THREADS=4 timeout "$EVAL_TIMEOUT" $PY -m tianci compose-eval --run "$WORK/$1" --k "$K" --top "$TOP" \
      --critic off --device "$dev" --cipu-source "$ROOT/cipu" --rhyme-source "$ROOT/rhyme" --out "$OUT/ce_$1.json" \
      > "$OUT/ce_$1.log" 2>&1
    local rc=$?; echo "device $dev rc=$rc" >> "$OUT/ce_$1.log"
    [ $rc -eq 0 ] || [ $rc -eq 124 ] && break
  done
}

if [[ $PARTS == *2* ]]; then
echo "== 2. classical pretraining + ci fine-tuning, $STEPS steps in all, two splits side by side"
arm() {
  local P=$1 log="$OUT/pre$1.log"
  OMP_NUM_THREADS=4 $T --preset "$PRESET" --data "$ROOT/classical" --out "$WORK/pre$P" --force --max-iters "$P" --eval-interval 500 \
    > "$log" 2>&1 &&
  OMP_NUM_THREADS=4 $T --init-from "$WORK/pre$P" --data "$ROOT/ci" --out "$WORK/ft$P" --force --max-iters $((STEPS - P)) \
    --eval-interval 250 >> "$log" 2>&1
  echo "arm $P rc=$?" >> "$log"
}
[ -d "$WORK/ci" ] && ce ci &  # the ci-only model composes meanwhile (CPU-bound; the arms are compared by steps)
arm "$PRE" & arm "$PRE2" & wait
tail -n 3 "$OUT/pre$PRE.log" "$OUT/pre$PRE2.log"
for r in "pre$PRE" "ft$PRE" "pre$PRE2" "ft$PRE2"; do cp "$WORK/$r/metrics.jsonl" "$OUT/metrics_$r.jsonl"; done; pack
fi

if [[ $PARTS == *3* ]]; then
echo "== 3. compose-eval of the fine-tuned models, critic off, k=$K"
ce "ft$PRE" & ce "ft$PRE2" & wait
tail -n 14 "$OUT"/ce_*.log

fi
for r in ci "ft$PRE" "ft$PRE2"; do cp "$WORK/$r/config.json" "$OUT/config_$r.json" 2>/dev/null; done; pack
