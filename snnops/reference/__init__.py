"""Plain-PyTorch references: the truth every kernel is tested against.

Each op has exactly one reference, in the submodule named after it. The tests, the
benchmarks and the no-extension fallback all use these functions. They are written
for clarity (Python loops over time, autograd for gradients), not for speed.
"""
from .bits import pack_bits_flat, unpack_bits_flat
from .bn_add import bn_add_bwd, bn_add_fwd
from .bn_lif import bn_lif_bwd, bn_lif_fwd
from .lif import lif, lif_bwd, lif_fwd, spike
from .spike_gemm import pack_spikes, spike_conv1x1, spike_gemm, spike_gemm_bwd, spike_gemm_lowbit, spike_gemm_packed, spike_linear, unpack_spikes
from .tt_conv import merge_half, merge_ptt, merge_stt, ptt_conv, ptt_conv_bwd, tt_block, tt_block_bwd, tt_conv, tt_conv_bwd, tt_layer

__all__ = ["spike", "lif", "lif_fwd", "lif_bwd", "pack_bits_flat", "unpack_bits_flat"]
