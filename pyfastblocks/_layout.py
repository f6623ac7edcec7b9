"""The memory-order rule of csrc/common/layout.cpp, for the fake impls (same rule, so same strides)."""
from typing import Sequence

import torch

FIRST = "first"  # NCHW-contiguous
LAST = "last"  # channels innermost (channels_last for 4-D)


def preferred_channel_order(x: torch.Tensor) -> str:
    """Channels-last when x has rank >= 3, more than one channel, and dim 1 has a smaller stride than every
    other non-trivial dim but 0 (when every spatial dim has size 1: than every spatial dim, as torch's
    suggest_memory_format decides that ambiguous case); else channels-first."""
    if x.dim() < 3 or x.size(1) <= 1:
        return FIRST
    spatial = [d for d in range(2, x.dim()) if x.size(d) > 1]
    for d in spatial or range(2, x.dim()):
        if x.stride(1) >= x.stride(d):
            return FIRST
    return LAST


def inputs_channel_order(inputs) -> str:
    """The order of a list of inputs (branch_concat): the first input with more than one channel decides."""
    for t in inputs:
        if t.size(1) > 1:
            return preferred_channel_order(t)
    return FIRST


def empty_in_order(sizes: Sequence[int], like: torch.Tensor, order: str, dtype=None) -> torch.Tensor:
    """An uninitialized tensor of `sizes`, dense in `order`, with like's device (and dtype unless given)."""
    sizes = list(sizes)
    rank = len(sizes)
    if order == FIRST or rank < 3:
        return like.new_empty(sizes, dtype=dtype)
    stored = [sizes[0], *sizes[2:], sizes[1]]
    return like.new_empty(stored, dtype=dtype).permute(0, rank - 1, *range(1, rank - 1))


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels accumulate and keep per-channel parameters in."""
    return torch.float64 if dtype == torch.float64 else torch.float32
