"""Triton kernels and their launchers, one file per kernel family (never imports reference/).

Flash attention: ``flash_fwd`` (forward, saves the LSE), ``flash_bwd`` (preprocess, dK/dV and dQ
kernels), ``flash_common`` (masks, tile ranges, tile tables), ``philox`` (dropout RNG, the
contract of ``attnkit.reference.philox``). Submodules import triton; this package does not, so
``import attnkit`` works without it.
"""
