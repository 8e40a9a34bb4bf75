#!/usr/bin/env bash
# The GPU measurements behind docs/speed.md's ci-gpu time to val 3.98 and docs/own-text.md's classical
# pretraining at GPU scale, as one script (a benchmark, not a test; one lent H200).
#   benchmarks/gpu_ci.sh DATA_ROOT OUT_DIR
# DATA_ROOT holds ci/ (`tianci prepare`) and classical/ (`tianci prepare --corpus classical`), and for
# compose-eval cipu/ and rhyme/ (the 词谱 and rhyme tables); OUT_DIR receives one archive, gpu_ci.tgz.
#   1. ci-gpu alone on the device, compiled, STEPS steps: the time to val 3.98 (compilation reported apart);
#   2. at equal steps, classical pretraining for P steps + fine-tuning on ci for STEPS - P, one arm for each
#      P in PRES, side by side, eager (the comparison is by steps, not seconds); without part 1 a ci-only
#      arm is trained beside them, eager too;
#   3. compose-eval (critic off: one draft a poem) of the ci-only model and of each fine-tuned one.
# PARTS picks the parts (default 123). On an H200 part 1 took 295 s (77 s of it compilation) and part 2 did
# not finish in the rest of a 15-minute lease: in a later lease, `PARTS=23 PRES=2500` (two processes).
set -uo pipefail
ROOT=${1:?data root}; DEST=${2:?out dir}; mkdir -p "$DEST"
STEPS=${STEPS:-5000}; PRES=${PRES:-2500 3750}; DEVICE=${DEVICE:-cuda}; K=${K:-10}
PRESET=${PRESET:-ci-gpu}; TOP=${TOP:-30}  # tests/test_gpu_script.py: a tiny preset on the CPU
PARTS=${PARTS:-123}; COMPILE=${COMPILE:---compile}; WORK=${WORK:-/tmp/gpu_ci}; EVAL_TIMEOUT=${EVAL_TIMEOUT:-240}
OUT=$WORK/logs; rm -rf "$WORK"; mkdir -p "$OUT"
# everything goes back as one archive, refreshed after each part (a call returns only a few files)
pack() {
  local r
  for r in "$WORK"/*/; do
    r=$(basename "$r"); [ "$r" = logs ] && continue
    cp "$WORK/$r/metrics.jsonl" "$OUT/metrics_$r.jsonl" 2>/dev/null
    cp "$WORK/$r/config.json" "$OUT/config_$r.json" 2>/dev/null
  done
  tar czf "$DEST/gpu_ci.tgz" -C "$OUT" .
}
export PYTHONPATH=${PYTHONPATH:-}:$(cd "$(dirname "$0")/../src" && pwd) PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
T="$PY -m tianci train --device $DEVICE --no-progress ${EXTRA:-}"  # EXTRA: more train flags (a CPU pilot)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT/gpu.txt"
$PY -c "import torch; print('torch', torch.__version__)" | tee -a "$OUT/gpu.txt"

ci_only() {  # $1: --compile or --no-compile
  local s; s=$(date +%s)
  $T --preset "$PRESET" --data "$ROOT/ci" --out "$WORK/ci" --force --max-iters "$STEPS" --eval-interval 250 "$1" \
    > "$OUT/ci.log" 2>&1
  echo "ci-only rc=$? wall $(( $(date +%s) - s )) s (process start to exit)" >> "$OUT/ci.log"
}

arm() {  # $1: pretraining steps
  local P=$1 log="$OUT/pre$1.log"
  $T --preset "$PRESET" --data "$ROOT/classical" --out "$WORK/pre$P" --force --max-iters "$P" --eval-interval 500 \
    > "$log" 2>&1 &&
  $T --init-from "$WORK/pre$P" --data "$ROOT/ci" --out "$WORK/ft$P" --force --max-iters $((STEPS - P)) \
    --eval-interval 250 >> "$log" 2>&1
  echo "arm $P rc=$?" >> "$log"
}

ce() {  # compose-eval, critic off; on the device, or on the CPU if that fails at once
  local dev rc
  for dev in "$DEVICE" cpu; do
    timeout "$EVAL_TIMEOUT" $PY -m tianci compose-eval --run "$WORK/$1" --k "$K" --top "$TOP" \
      --critic off --device "$dev" --cipu-source "$ROOT/cipu" --rhyme-source "$ROOT/rhyme" --out "$OUT/ce_$1.json" \
      > "$OUT/ce_$1.log" 2>&1
    rc=$?; echo "device $dev rc=$rc" >> "$OUT/ce_$1.log"
    { [ $rc -eq 0 ] || [ $rc -eq 124 ]; } && break
  done
}

if [[ $PARTS == *1* ]]; then
  echo "== 1. $PRESET, $STEPS steps, alone on the device ($COMPILE)"
  ci_only "$COMPILE"; tail -n 2 "$OUT/ci.log"; pack
fi

if [[ $PARTS == *2* ]]; then
  echo "== 2. classical pretraining ($PRES steps) + ci fine-tuning, $STEPS steps in all, side by side"
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}  # several processes share the host's cores
  if [ -d "$WORK/ci" ]; then ce ci & else ci_only --no-compile & fi  # the ci-only arm or its compose-eval
  for P in $PRES; do arm "$P" & done
  wait
  for P in $PRES; do tail -n 2 "$OUT/pre$P.log"; done; tail -n 2 "$OUT/ci.log"; pack
fi

if [[ $PARTS == *3* ]]; then
  echo "== 3. compose-eval of each model, critic off, k=$K"
  export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
  [ -f "$OUT/ce_ci.json" ] || ce ci &
  for P in $PRES; do ce "ft$P" & done
  wait
  tail -n 14 "$OUT"/ce_*.log; pack
fi
