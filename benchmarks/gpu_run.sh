#!/usr/bin/env bash
# The GPU run of attnkit: the GPU test suite, then the benchmark suites, logs and JSON to $OUT.
#
#   benchmarks/gpu_run.sh                 # everything: tests prefill memory decode mla-decode
#   benchmarks/gpu_run.sh prefill memory  # only these stages
#   QUICK=1 benchmarks/gpu_run.sh prefill # fewer shapes (validation)
#   BACKEND=triton benchmarks/gpu_run.sh  # attnkit backend to time (default: auto)
#   RESUME=dir benchmarks/gpu_run.sh prefill  # continue from dir/prefill.json of a stopped run
#   BENCH_ARGS="--cases d64" benchmarks/gpu_run.sh prefill  # more `attnkit bench` options
#
# Run from the repository root on the GPU machine; installs nothing (uses python3's torch,
# triton, rich, matplotlib). Everything printed goes to $OUT/run.log; each benchmark stage also
# writes $OUT/<suite>.json (rewritten after every case, so a stopped run keeps what it measured)
# and $OUT/<suite>.png (few files: the device tool brings back at most 8). Stages run one after
# the other; a failing stage does not stop the next one; the exit status is 1 if any stage
# failed. Copy the JSON you keep to benchmarks/results/.
set -u -o pipefail

OUT="${OUT:-benchmarks/results/$(date -u +%Y%m%d-%H%M%S)}"
PYTHON="${PYTHON:-python3}"
BACKEND="${BACKEND:-auto}"
mkdir -p "$OUT"
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$(pwd)" PYTHONUNBUFFERED=1

stages=("$@")
if [ ${#stages[@]} -eq 0 ]; then
    stages=(tests prefill memory decode mla-decode)
fi
quick=()
if [ -n "${QUICK:-}" ]; then
    quick=(--quick)
fi

suites=$("$PYTHON" -m attnkit bench --list 2>/dev/null | sed -n 's/^\([a-z0-9-]*\): .*/\1/p')
LOG="$OUT/run.log"
"$PYTHON" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__,
"gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' 2>&1 | tee -a "$LOG"

status=0
for stage in "${stages[@]}"; do
    start=$(date +%s)
    echo "=== $stage ($(date -u +%H:%M:%S))" | tee -a "$LOG"
    if [ "$stage" = tests ]; then
        "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee -a "$LOG"
        rc=$?
    elif printf '%s\n' $suites | grep -qx -- "$stage"; then
        resume=()
        if [ -n "${RESUME:-}" ] && [ -f "$RESUME/$stage.json" ]; then
            resume=(--resume "$RESUME/$stage.json")
        fi
        "$PYTHON" -m attnkit bench --suite "$stage" --backend "$BACKEND" "${quick[@]}" \
            "${resume[@]}" ${BENCH_ARGS:-} --json "$OUT/$stage.json" --plot "$OUT/$stage.png" 2>&1 \
            | tee -a "$LOG"
        rc=$?
    else
        echo "no stage named $stage (stages: tests $(echo $suites))" | tee -a "$LOG"
        rc=2
    fi
    echo "=== $stage: exit $rc after $(( $(date +%s) - start )) s" | tee -a "$LOG"
    [ "$rc" -ne 0 ] && status=1
done
exit $status
