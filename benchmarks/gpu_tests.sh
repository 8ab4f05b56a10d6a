# Sourced by the one-call GPU scripts (final_gpu_run.sh, sweep_gpu_run.sh): the GPU's state and
# the GPU test suite in parallel shards without autotuning (ATTNKIT_FLASH_TUNE=0), logs in $OUT.
#   gpu_info                      -> $OUT/gpu.txt (name, clocks, temperature, torch, triton)
#   start_test_shards TIMEOUT     starts the shards in the background (TESTS=tiles: the tile-
#                                 table shards only; TESTS=flash: the other flash shards;
#                                 TESTS=gluon: tests/gpu/test_flash_gluon_gpu.py only, in
#                                 the shards GLUON_SHARDS names (default all nine);
#                                 TESTS="<-k expression>" only those flash tests; SKIP_TESTS=1
#                                 none); then `wait`
#   collect_test_shards           -> $OUT/tests.log, and prints the summary lines
# Sourcing it also sets up the call: the source tree on PYTHONPATH, unbuffered output, and
# $OUT (default /tmp/out) created.

export PYTHONPATH=. PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"

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
  if [ "${TESTS:-all}" = "gluon" ]; then  # the Gluon kernels' file, in nine shards
    local G=tests/gpu/test_flash_gluon_gpu.py name
    local REST="gradients_match or gqa_matches or window_matches or split_walks"
    for name in ${GLUON_SHARDS:-fg1 fg2 fg3 fg4 fg5 fg6 fg7 fg8 fg9}; do
      case $name in
        fg1) _shard "$limit" fg1 $G -k "forward_tiling and not (q2 or split)" &;;
        fg6) _shard "$limit" fg6 $G -k "(forward_tiling and (q2 or split)) or partition_layout" &;;
        fg2) _shard "$limit" fg2 $G -k "dq_kernel" &;;
        fg9) _shard "$limit" fg9 $G -k "dq_tiling" &;;
        fg3) _shard "$limit" fg3 $G -k "($REST) and not (mla or d64 or split_walks)" &;;
        fg8) _shard "$limit" fg8 $G -k "split_walks and not (mla or d64)" &;;
        fg7) _shard "$limit" fg7 $G -k "not (forward_tiling or partition_layout or dq_kernel or dq_tiling or mla or d64 or $REST)" &;;
        fg4) _shard "$limit" fg4 $G -k "mla" &;;
        fg5) _shard "$limit" fg5 $G -k "d64" &;;
      esac
    done
    return
  fi
  case "${TESTS:-all}" in all|flash|tiles) ;; *)
    _shard "$limit" some $F -k "$TESTS" &
    return;;
  esac
  if [ "${TESTS:-all}" != "flash" ]; then
    # every row of the tile tables (the autotuner may pick any): forward and dQ rows, dK/dV
    # rows on descriptors, on pointers, and on pointers with atomic dQ
    _shard "$limit" ta $F -k "every_tile and (fwd or dq-)" &
    _shard "$limit" tb $F -k "every_tile and dkdv and tma_desc" &
    _shard "$limit" tc $F -k "every_tile and dkdv and dq_kernel and ptr_loads" &
    _shard "$limit" td $F -k "every_tile and dkdv and dq_atomic" &
    [ "${TESTS:-all}" = "tiles" ] && return
  fi
  for t in ptr_loads tma_desc; do  # pointer loads, TMA descriptors (ATTNKIT_FLASH_TMA none/all)
    _shard "$limit" fa_$t $F -k "head_dims and bf16 and $t" &
    _shard "$limit" fb_$t $F -k "head_dims and fp16 and $t" &
    _shard "$limit" fd_$t $F -k "variants and atomic and $t" &
    _shard "$limit" ff_$t $F -k "variants and kernel and $t" &
  done
  _shard "$limit" fc $F -k "lengths or fp32 or reproducible or auto or compile or opcheck or tma_path" &
  _shard "$limit" fl $F -k "fast_launch" &
  _shard "$limit" fg tests/gpu/test_flash_gluon_gpu.py &
  [ "${TESTS:-all}" = "flash" ] && return
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
