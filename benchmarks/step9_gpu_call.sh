#!/usr/bin/env bash
# Step 9's first call (benchmarks/NOTES-flash.md): the Gluon dK/dV kernel's GPU tests
# (tests/gpu/test_flash_gluon_gpu.py), then
# benchmarks/gluon_dkdv.py --check (the whole backward with and without it). Logs and JSON
# under $OUT.   TEST_LIMIT (s, default 200), PROBE_LIMIT (s, default 200)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
source benchmarks/gpu_tests.sh
gpu_info
T=${TEST_LIMIT:-200}
_shard "$T" fg tests/gpu/test_flash_gluon_gpu.py &
wait
collect_test_shards
timeout "${PROBE_LIMIT:-200}" python benchmarks/gluon_dkdv.py --check > "$OUT/gluon_dkdv.log" 2>&1
echo "probe rc=$?"
cut -c1-600 "$OUT/gluon_dkdv.log" | grep -v Warn
