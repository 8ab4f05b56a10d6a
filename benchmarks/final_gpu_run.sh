#!/usr/bin/env bash
# One device call that fits a short lease: every GPU test file in parallel (the flash tests in
# four shards, without autotuning), then the quick prefill benchmark until its time runs out.
# Logs and JSON under $OUT. Installs nothing.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
T=${TEST_TIMEOUT:-270}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu --format=csv > "$OUT/gpu.txt" 2>&1
shard() {  # shard NAME PYTEST-ARGS...
  local name=$1; shift
  ATTNKIT_FLASH_TUNE=0 timeout "$T" python -m pytest -q -m gpu -p no:cacheprovider "$@" \
    > "$OUT/t_$name.log" 2>&1
  echo "shard $name rc=$?" >> "$OUT/t_$name.log"
}
F=tests/gpu/test_flash_gpu.py
shard fa $F -k "head_dims" &
shard fb $F -k "lengths or fp32 or reproducible or auto" &
shard fc $F -k "variants and atomic" &
shard fd $F -k "(variants and det) or compile or opcheck" &
shard other tests/gpu/test_decode_gpu.py tests/gpu/test_sparse_gpu.py tests/test_nn_gpu.py &
wait
cat "$OUT"/t_*.log > "$OUT/tests.log"; rm "$OUT"/t_*.log
grep -E "^(FAILED|ERROR)|passed|failed|^shard" "$OUT/tests.log" | head -60
timeout "${BENCH_TIMEOUT:-230}" python -m attnkit bench --suite prefill --quick \
  --json "$OUT/prefill-quick.json" > "$OUT/bench.log" 2>&1
echo "bench rc=$?"
tail -c 6000 "$OUT/bench.log"
