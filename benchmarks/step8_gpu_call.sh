#!/usr/bin/env bash
# Step 8's first call (benchmarks/NOTES-flash.md): the one-launch backward's GPU tests in
# parallel shards (every variant on pointers and on descriptors, every tile-table row, the
# reproducibility and kept-kernel tests), then benchmarks/probe_step8.py (the whole backward,
# one launch against two, at the dense prefill shapes). Logs and JSON under $OUT.
#   TEST_LIMIT (s, default 170), PROBE_LIMIT (s, default 330)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
source benchmarks/gpu_tests.sh
gpu_info
F=tests/gpu/test_flash_gpu.py
T=${TEST_LIMIT:-170}
_shard "$T" fe_ptr $F -k "variants and fused and ptr_loads" &
_shard "$T" fe_tma $F -k "variants and fused and tma_desc" &
_shard "$T" te $F -k "every_tile and fused" &
_shard "$T" fx $F -k "reproducible or (fast_launch and fused)" &
wait
collect_test_shards
timeout "${PROBE_LIMIT:-330}" python benchmarks/probe_step8.py > "$OUT/probe8.log" 2>&1
echo "probe rc=$?"
cut -c1-400 "$OUT/probe8.log"
