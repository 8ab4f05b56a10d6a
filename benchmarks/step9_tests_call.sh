#!/usr/bin/env bash
# Step 9's last call (benchmarks/NOTES-flash.md): on the code of run 9, the Gluon kernels' GPU
# tests (the launchers' choice among them) beside the flash `fc` shard (lengths, fp32,
# reproducibility, backend choice, torch.compile, opcheck). Logs under $OUT.
#   TEST_LIMIT (s, default 170)
set -u
. benchmarks/gpu_tests.sh  # PYTHONPATH, $OUT, the test shards
gpu_info
T=${TEST_LIMIT:-170}
_shard "$T" fg2 tests/gpu/test_flash_gluon_gpu.py -k "not (forward_tiling or partition_layout)" &
_shard "$T" fc tests/gpu/test_flash_gpu.py -k "lengths or fp32 or reproducible or auto or compile or opcheck or tma_path" &
wait
collect_test_shards
