"""Triton kernels and their launchers, one file per kernel family (never imports reference/).

Flash attention: ``flash_fwd`` (forward, saves the LSE), ``flash_bwd`` (preprocess, dK/dV and dQ
kernels), ``flash_common`` (masks, tile ranges, tile tables), ``philox`` (dropout RNG, the
contract of ``attnkit.reference.philox``); on Hopper, ``flash_fwd_gluon`` and
``flash_bwd_gluon`` (warp-specialised Gluon kernels the launchers pick for dense d 128
attention; ``gluon_sm90`` holds what they share). Submodules import triton; this package
does not, so ``import attnkit`` works without it.
"""
