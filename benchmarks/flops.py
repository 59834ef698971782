"""FLOPs counted, not estimated: one helper for every benchmark script."""
from __future__ import annotations

import torch


def count_flops(fn) -> int:
    """FLOPs of one call of `fn`, counted by FlopCounterMode (the MHA fast path and the fused SDPA
    kernels off, so attention is counted as the math it is)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            fn()
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return int(counter.get_total_flops())
