#!/usr/bin/env bash
# Step 9's calls (benchmarks/NOTES-flash.md): the Gluon kernels' GPU tests
# (tests/gpu/test_flash_gluon_gpu.py), then
# the probes' --check (PROBES, default gluon_dkdv: the whole backward with and without it;
# gluon_fwd: the forward). Logs and JSON under $OUT.
#   TEST_LIMIT (s, default 200), PROBE_LIMIT (s per probe, default 200)
set -u
. benchmarks/gpu_tests.sh  # PYTHONPATH, $OUT, the test shards
gpu_info
TESTS=gluon start_test_shards "${TEST_LIMIT:-200}"
wait
collect_test_shards
for p in ${PROBES:-gluon_dkdv}; do
  timeout "${PROBE_LIMIT:-200}" python "benchmarks/$p.py" --check > "$OUT/$p.log" 2>&1
  echo "$p rc=$?"
  cut -c1-600 "$OUT/$p.log" | grep -v Warn
done
