#!/usr/bin/env bash
# One device call: every GPU test file in parallel shards (no autotuning) beside parallel
# compile-only warmers of the flash sweep, then the timed kernel sweep (benchmarks/flash_sweep.py)
# on an idle GPU. Logs and JSON under $OUT (at most 8 files). Installs nothing.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
T=${TEST_TIMEOUT:-240}
SWEEP_ARGS=${SWEEP_ARGS:---wide}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv \
  > "$OUT/gpu.txt" 2>&1
python -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' \
  >> "$OUT/gpu.txt" 2>&1
shard() {  # shard NAME PYTEST-ARGS...
  local name=$1; shift
  ATTNKIT_FLASH_TUNE=0 timeout "$T" python -m pytest -q -m gpu -p no:cacheprovider "$@" \
    > "$OUT/t_$name.log" 2>&1
  echo "shard $name rc=$?" >> "$OUT/t_$name.log"
}
if [ "${SKIP_TESTS:-0}" != "1" ]; then
  F=tests/gpu/test_flash_gpu.py
  shard fa $F -k "head_dims" &
  shard fb $F -k "lengths or fp32 or reproducible or auto or compile or opcheck" &
  shard fc $F -k "variants and atomic" &
  shard fd $F -k "variants and fused" &
  shard fe $F -k "variants and kernel" &
  shard dec tests/gpu/test_decode_gpu.py &
  shard oth tests/gpu/test_sparse_gpu.py tests/test_nn_gpu.py &
fi
N=${WARMERS:-8}
for i in $(seq 0 $((N - 1))); do
  timeout "$T" python benchmarks/flash_sweep.py $SWEEP_ARGS --warm "$i/$N" > "$OUT/w_$i.log" 2>&1 &
done
wait
if [ "${SKIP_TESTS:-0}" != "1" ]; then
  cat "$OUT"/t_*.log > "$OUT/tests.log"; rm "$OUT"/t_*.log
  grep -E "^(FAILED|ERROR)|passed|failed|^shard" "$OUT/tests.log" | head -80
fi
cat "$OUT"/w_*.log > "$OUT/warm.log"; rm "$OUT"/w_*.log
grep -c . "$OUT/warm.log"
timeout "${SWEEP_TIMEOUT:-300}" python benchmarks/flash_sweep.py $SWEEP_ARGS \
  --json "$OUT/sweep.json" > "$OUT/sweep.log" 2>&1
echo "sweep rc=$?"
cut -c 1-400 "$OUT/sweep.log" | tail -40
