#!/usr/bin/env bash
# The GPU run of attnkit: the GPU test suite, then the benchmark suites, logs and JSON to $OUT.
#
#   benchmarks/gpu_run.sh                 # everything: tests prefill memory decode mla-decode
#   benchmarks/gpu_run.sh prefill memory  # only these stages
#   QUICK=1 benchmarks/gpu_run.sh prefill # fewer shapes (validation)
#   BACKEND=triton benchmarks/gpu_run.sh  # attnkit backend to time (default: auto)
#   RESUME=dir benchmarks/gpu_run.sh prefill  # continue from dir/prefill.json of a stopped run
#
# Run from the repository root on the GPU machine; installs nothing (uses python3's torch,
# triton, rich, matplotlib). Each stage writes $OUT/<stage>.log, benchmark stages also
# $OUT/<suite>.json (rewritten after every case, so a stopped run keeps what it measured) and
# $OUT/<suite>.png. Stages run one after the other; a failing stage does not stop the next one;
# the exit status is 1 if any stage failed. Copy the JSON you keep to benchmarks/results/.
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
"$PYTHON" -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__,
"gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)' 2>&1 \
    | tee "$OUT/environment.log"

status=0
for stage in "${stages[@]}"; do
    start=$(date +%s)
    echo "=== $stage ($(date -u +%H:%M:%S))"
    if [ "$stage" = tests ]; then
        "$PYTHON" -m pytest -m gpu -q -p no:cacheprovider 2>&1 | tee "$OUT/tests.log"
        rc=$?
    elif printf '%s\n' $suites | grep -qx -- "$stage"; then
        resume=()
        if [ -n "${RESUME:-}" ] && [ -f "$RESUME/$stage.json" ]; then
            resume=(--resume "$RESUME/$stage.json")
        fi
        "$PYTHON" -m attnkit bench --suite "$stage" --backend "$BACKEND" "${quick[@]}" \
            "${resume[@]}" --json "$OUT/$stage.json" --plot "$OUT/$stage.png" 2>&1 \
            | tee "$OUT/$stage.log"
        rc=$?
    else
        echo "no stage named $stage (stages: tests $(echo $suites))" | tee "$OUT/$stage.log"
        rc=2
    fi
    echo "=== $stage: exit $rc after $(( $(date +%s) - start )) s"
    [ "$rc" -ne 0 ] && status=1
done
exit $status
