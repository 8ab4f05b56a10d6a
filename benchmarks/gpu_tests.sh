# Sourced by the one-call GPU scripts (final_gpu_run.sh, sweep_gpu_run.sh): the GPU's state and
# the GPU test suite in parallel shards without autotuning (ATTNKIT_FLASH_TUNE=0), logs in $OUT.
#   gpu_info                      -> $OUT/gpu.txt (name, clocks, temperature, torch, triton)
#   start_test_shards TIMEOUT     starts the shards in the background (TESTS="<-k expression>"
#                                 runs only those flash tests; SKIP_TESTS=1 none); then `wait`
#   collect_test_shards           -> $OUT/tests.log, and prints the summary lines

gpu_info() {
  nvidia-smi --query-gpu=name,clocks.sm,clocks.max.sm,temperature.gpu,power.draw \
    --format=csv > "$OUT/gpu.txt" 2>&1
  python -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)' \
    >> "$OUT/gpu.txt" 2>&1
}

_shard() {  # _shard TIMEOUT NAME PYTEST-ARGS...
  local limit=$1 name=$2; shift 2
  ATTNKIT_FLASH_TUNE=0 TORCHINDUCTOR_COMPILE_THREADS=1 timeout "$limit" \
    python -m pytest -q -m gpu -p no:cacheprovider "$@" > "$OUT/t_$name.log" 2>&1
  echo "shard $name rc=$?" >> "$OUT/t_$name.log"
}

start_test_shards() {  # start_test_shards TIMEOUT
  local limit=$1 F=tests/gpu/test_flash_gpu.py D=tests/gpu/test_decode_gpu.py
  [ "${SKIP_TESTS:-0}" = "1" ] && return
  if [ "${TESTS:-all}" != "all" ]; then
    _shard "$limit" some $F -k "$TESTS" &
    return
  fi
  _shard "$limit" fa $F -k "head_dims and bf16" &
  _shard "$limit" fb $F -k "head_dims and fp16" &
  _shard "$limit" fc $F -k "lengths or fp32 or reproducible or auto or compile or opcheck" &
  _shard "$limit" fd $F -k "variants and atomic" &
  _shard "$limit" ff $F -k "variants and kernel" &
  _shard "$limit" da $D -k "matrix and bf16" &
  _shard "$limit" db $D -k "matrix and fp16" &
  _shard "$limit" dc $D -k "not matrix" &
  _shard "$limit" oth tests/gpu/test_sparse_gpu.py tests/test_nn_gpu.py &
}

collect_test_shards() {
  ls "$OUT"/t_*.log > /dev/null 2>&1 || return
  cat "$OUT"/t_*.log > "$OUT/tests.log"
  rm "$OUT"/t_*.log
  grep -E "^(FAILED|ERROR)|passed|failed|^shard" "$OUT/tests.log" | head -60
}
