#!/usr/bin/env bash
# Step 9's calls (benchmarks/NOTES-flash.md): the Gluon kernels' GPU tests
# (tests/gpu/test_flash_gluon_gpu.py), then
# the probes' --check (PROBES, default gluon_dkdv, empty for none: the whole backward with and without it;
# gluon_fwd: the forward; gluon_dq: the dQ kernel). Logs and JSON under $OUT.
#   TEST_LIMIT (s, default 200), PROBE_LIMIT (s per probe, default 200)
#   PROBE_CASES: the cases every probe runs (names joined by commas; default all);
#   PROBE_CASES_<probe> (e.g. PROBE_CASES_gluon_fwd) overrides it for one probe
#   DEBUG_Q2=1: benchmarks/debug_q2.py first (DEBUG_LIMIT s, default 150)
set -u
. benchmarks/gpu_tests.sh  # PYTHONPATH, $OUT, the test shards
gpu_info
if [ "${DEBUG_Q2:-0}" = "1" ]; then
  OUT=$OUT timeout "${DEBUG_LIMIT:-150}" python benchmarks/debug_q2.py > "$OUT/debug_q2.log" 2>&1
  echo "debug_q2 rc=$?"
  grep -v Warn "$OUT/debug_q2.log" | cut -c1-200 | tail -40
fi
TESTS=gluon start_test_shards "${TEST_LIMIT:-200}"
wait
collect_test_shards
for p in ${PROBES-gluon_dkdv}; do  # PROBES= (empty): none
  own="PROBE_CASES_$p"
  PROBE_CASES="${!own:-${PROBE_CASES:-}}" timeout "${PROBE_LIMIT:-200}" \
    python "benchmarks/$p.py" --check > "$OUT/$p.log" 2>&1
  echo "$p rc=$?"
  cut -c1-600 "$OUT/$p.log" | grep -v Warn
done
