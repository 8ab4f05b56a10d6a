#!/usr/bin/env bash
# One device call for the flash kernels: GPU tests (4 shards in parallel, no autotuning),
# then the tuning timings (autotuned). Logs and JSON under $OUT.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
T=${TEST_TIMEOUT:-240}
run_shard() {
  ATTNKIT_FLASH_TUNE=0 timeout "$T" python -m pytest -q -m gpu tests/gpu/test_flash_gpu.py -k "$1" \
    -p no:cacheprovider > "$OUT/test_$2.log" 2>&1
  echo "shard $2 rc=$?" >> "$OUT/test_$2.log"
}
if [ "${SKIP_TESTS:-0}" != "1" ]; then
  run_shard "head_dims" a &
  run_shard "lengths or fp32 or reproducible or auto" b &
  run_shard "variants and atomic" c &
  run_shard "(variants and det) or compile or opcheck" d &
  wait
  tail -n 3 "$OUT"/test_*.log
  cat "$OUT"/test_*.log | grep -E "^(FAILED|ERROR)|Error:|error " | head -40 > "$OUT/test_failures.txt"
  head -40 "$OUT/test_failures.txt"
fi
timeout "${TUNE_TIMEOUT:-300}" python benchmarks/tune_flash.py --json "$OUT/tune.json" ${TUNE_ARGS:-} 2>&1 | tee "$OUT/tune.log" | grep -v "^{" 
grep -c '"error"' "$OUT/tune.json" || true
