#!/usr/bin/env bash
# One device call that fits a short lease (installs nothing; logs and JSON under $OUT, at most
# 8 files):
#   phase A, all at once (none of it is timed): every GPU test file in shards without
#     autotuning, the memory suite (peak memory only), and untimed runs of the prefill suite
#     in slices that fill Triton's and inductor's disk caches (attnkit's configs, compiled
#     FlexAttention);
#   phase B, alone on the GPU: the whole prefill suite, timed, in one process.
# TESTS=all (default) runs every GPU test file; TESTS="<pytest -k expression>" runs only those
# flash tests; SKIP_TESTS=1 and SKIP_MEMORY=1 leave the tests or the memory suite out.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
TA=${PHASE_A_TIMEOUT:-270}
nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv \
  > "$OUT/gpu.txt" 2>&1
python -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' \
  >> "$OUT/gpu.txt" 2>&1
shard() {  # shard NAME PYTEST-ARGS...
  local name=$1; shift
  ATTNKIT_FLASH_TUNE=0 TORCHINDUCTOR_COMPILE_THREADS=1 timeout "$TA" \
    python -m pytest -q -m gpu -p no:cacheprovider "$@" > "$OUT/t_$name.log" 2>&1
  echo "shard $name rc=$?" >> "$OUT/t_$name.log"
}
F=tests/gpu/test_flash_gpu.py
if [ "${SKIP_TESTS:-0}" != "1" ] && [ "${TESTS:-all}" != "all" ]; then
  shard some $F -k "$TESTS" &
elif [ "${SKIP_TESTS:-0}" != "1" ]; then
  shard fa $F -k "head_dims and bf16" &
  shard fb $F -k "head_dims and fp16" &
  shard fc $F -k "lengths or fp32 or reproducible or auto or compile or opcheck" &
  shard fd $F -k "variants and atomic" &
  shard fe $F -k "variants and fused" &
  shard ff $F -k "variants and kernel" &
  D=tests/gpu/test_decode_gpu.py
  shard da $D -k "matrix and bf16" &
  shard db $D -k "matrix and fp16" &
  shard dc $D -k "not matrix" &
  shard oth tests/gpu/test_sparse_gpu.py tests/test_nn_gpu.py &
fi
if [ "${SKIP_MEMORY:-0}" != "1" ]; then
  timeout "$TA" python -m attnkit bench --suite memory --ops sdpa-flash,sdpa-cudnn \
    --json "$OUT/memory.json" \
    --plot "$OUT/memory.png" > "$OUT/memory.log" 2>&1 &
fi
WARM=("mha d64 s1k" "mha d64 s4k" "mha d64 s16k" "mha d128 s1k" "mha d128 s4k" "mha d128 s16k"
      "gqa 32:8 d128 s4k full" "gqa 32:8 d128 s4k causal" "varlen|window" "mla d192/128 s4k full"
      "mla d192/128 s4k causal")
for i in "${!WARM[@]}"; do
  args=()
  IFS='|' read -ra parts <<< "${WARM[$i]}"
  for p in "${parts[@]}"; do args+=(--cases "$p"); done
  TORCHINDUCTOR_COMPILE_THREADS=2 timeout "$TA" python -m attnkit bench --suite prefill \
    "${args[@]}" --warmup-ms 1 --rep-ms 1 --no-ceilings --json "/tmp/warm_$i.json" \
    > "/tmp/warm_$i.log" 2>&1 &
done
wait
if [ "${SKIP_TESTS:-0}" != "1" ]; then
  cat "$OUT"/t_*.log > "$OUT/tests.log"; rm "$OUT"/t_*.log
  grep -E "^(FAILED|ERROR)|passed|failed|^shard" "$OUT/tests.log" | head -60
fi
tail -n 4 /tmp/warm_*.log | cut -c 1-200
[ -f "$OUT/memory.log" ] && tail -n 25 "$OUT/memory.log" | cut -c 1-200
echo "=== phase B $(date -u +%H:%M:%S)"
timeout "${BENCH_TIMEOUT:-320}" python -m attnkit bench --suite prefill \
  --json "$OUT/prefill.json" --plot "$OUT/prefill.png" > "$OUT/bench.log" 2>&1
echo "bench rc=$? $(date -u +%H:%M:%S)"
tail -c 7000 "$OUT/bench.log"
