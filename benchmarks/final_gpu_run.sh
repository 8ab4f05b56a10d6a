#!/usr/bin/env bash
# One device call that fits a short lease (installs nothing; logs and JSON under $OUT, at most
# 8 files):
#   phase A, all at once (none of it is timed): every GPU test file in shards without
#     autotuning, the memory suite (peak memory only), and untimed runs of the prefill suite
#     in slices that fill Triton's and inductor's disk caches (attnkit's configs, compiled
#     FlexAttention);
#   phase B, alone on the GPU: the whole prefill suite, timed, in one process.
# TESTS=all (default) runs every GPU test file; TESTS=flash the flash shards without the tile-
# table ones, TESTS=tiles only those, TESTS=gluon the Gluon kernels' file, TESTS="<pytest -k
# expression>" only those flash tests;
# SKIP_TESTS=1 and SKIP_MEMORY=1 leave the tests or the memory suite out.
set -u
. benchmarks/gpu_tests.sh  # PYTHONPATH, $OUT, the test shards
TA=${PHASE_A_TIMEOUT:-270}
gpu_info
start_test_shards "$TA"
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
collect_test_shards
tail -n 4 /tmp/warm_*.log | cut -c 1-200
[ -f "$OUT/memory.log" ] && tail -n 25 "$OUT/memory.log" | cut -c 1-200
echo "=== phase B $(date -u +%H:%M:%S)"
timeout "${BENCH_TIMEOUT:-320}" python -m attnkit bench --suite prefill \
  --json "$OUT/prefill.json" --plot "$OUT/prefill.png" > "$OUT/bench.log" 2>&1
echo "bench rc=$? $(date -u +%H:%M:%S)"
tail -c 7000 "$OUT/bench.log"
