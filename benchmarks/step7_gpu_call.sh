#!/usr/bin/env bash
# Step 7's check call (benchmarks/NOTES-flash.md): the fast-launch GPU tests in four shards,
# then the host-time probe with the kept-kernel launches on and off, then the three 1k
# prefill shapes against SDPA FA2 and Flex. Logs and JSON under $OUT.
set -u
export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT/fast1" "$OUT/fast0"
F=tests/gpu/test_flash_gpu.py
for k in "fast_launch and additive" "fast_launch and dropout" "fast_launch and packed" \
         "misaligned or overlapped"; do
  ATTNKIT_FLASH_TUNE=0 timeout 200 python -m pytest -q -m gpu -p no:cacheprovider $F -k "$k" \
    > "$OUT/t_${k// /_}.log" 2>&1 &
done
wait
cat "$OUT"/t_*.log > "$OUT/tests.log"; rm "$OUT"/t_*.log
grep -E "^(FAILED|ERROR)|passed|failed" "$OUT/tests.log"
for f in 1 0; do
  ATTNKIT_FAST_LAUNCH=$f OUT="$OUT/fast$f" timeout 100 python benchmarks/host_profile.py \
    > "$OUT/fast$f/probe-host.log" 2>&1
  echo "fast launch $f:"; cat "$OUT/fast$f/probe-host.log"
done
timeout 200 python -m attnkit bench --suite prefill --cases "mha d128 s1k causal" \
  --cases "mha d64 s1k causal" --cases "mha d128 s1k full" --ops sdpa-flash,flex \
  --json "$OUT/bench-1k.json" > "$OUT/bench-1k.log" 2>&1
grep -E "ms \(|tiles" "$OUT/bench-1k.log"
