#!/usr/bin/env bash
# One device call: every GPU test file in parallel shards (no autotuning; TESTS and SKIP_TESTS
# as in benchmarks/gpu_tests.sh) beside parallel
# compile-only warmers of the flash sweep, then the timed kernel sweep (benchmarks/flash_sweep.py)
# on an idle GPU. Logs and JSON under $OUT (at most 8 files). Installs nothing.
# SWEEP_ARGS: flash_sweep options (default --wide); ONLY="a|b": only the shapes matching a or b.
set -u
. benchmarks/gpu_tests.sh  # PYTHONPATH, $OUT, the test shards
T=${TEST_TIMEOUT:-240}
SWEEP_ARGS=${SWEEP_ARGS:---wide}
ONLY_ARGS=()  # ONLY="case substring|case substring|...": only those shapes
if [ -n "${ONLY:-}" ]; then
  IFS='|' read -ra parts <<< "$ONLY"
  for p in "${parts[@]}"; do ONLY_ARGS+=(--only "$p"); done
fi
gpu_info
start_test_shards "$T"
N=${WARMERS:-8}
for i in $(seq 0 $((N - 1))); do
  timeout "$T" python benchmarks/flash_sweep.py $SWEEP_ARGS "${ONLY_ARGS[@]}" --warm "$i/$N" > "$OUT/w_$i.log" 2>&1 &
done
wait
collect_test_shards
cat "$OUT"/w_*.log > "$OUT/warm.log"; rm "$OUT"/w_*.log
grep -c . "$OUT/warm.log"
timeout "${SWEEP_TIMEOUT:-300}" python benchmarks/flash_sweep.py $SWEEP_ARGS "${ONLY_ARGS[@]}" \
  --json "$OUT/sweep.json" > "$OUT/sweep.log" 2>&1
echo "sweep rc=$?"
cut -c 1-400 "$OUT/sweep.log" | tail -40
