#!/usr/bin/env bash
# Step 8's probe call (benchmarks/NOTES-flash.md): GPU tests of the atomic dQ path on
# descriptors (TMA bulk reductions) in parallel shards (every variant, every dK/dV tile row,
# the kept-kernel tests), then benchmarks/probe_step8.py (the whole backward against the
# separate dQ kernel at the dense prefill shapes). Logs and JSON under $OUT.
#   TEST_LIMIT (s, default 170), PROBE_LIMIT (s, default 330)
set -u
. benchmarks/gpu_tests.sh  # PYTHONPATH, $OUT, the test shards
gpu_info
F=tests/gpu/test_flash_gpu.py
T=${TEST_LIMIT:-170}
_shard "$T" fa $F -k "variants and atomic and tma_desc" &
_shard "$T" ta $F -k "every_tile and dkdv and dq_atomic and tma_desc" &
_shard "$T" fl $F -k "fast_launch and atomic and tma_desc" &
wait
collect_test_shards
timeout "${PROBE_LIMIT:-330}" python benchmarks/probe_step8.py > "$OUT/probe8.log" 2>&1
echo "probe rc=$?"
cut -c1-400 "$OUT/probe8.log"
