#!/usr/bin/env bash
# One device call for the Gluon experiments (benchmarks/NOTES-flash.md, step 8, "Next" 1):
# each kernel against the float64 oracle at awkward shapes, then timed against the shipped
# Triton kernel at the prefill shapes. Installs nothing; JSON and logs under $OUT.
#   LIMIT (s per experiment, default 270)
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
. benchmarks/gpu_tests.sh
gpu_info
for e in gluon_dkdv gluon_fwd; do
  timeout "${LIMIT:-270}" python "benchmarks/$e.py" --check > "$OUT/$e.log" 2>&1
  echo "$e rc=$?"
  cut -c1-600 "$OUT/$e.log" | grep -v Warning
done
