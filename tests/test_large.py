"""Indexing past 2^31 elements (issue 8): ops over tensors of more than 2^31 elements give the right answer, on
CPU and (where present) CUDA.

Every CPU kernel first copies an input that is not dense in its preferred memory order (`to_order` in
csrc/common/layout.cpp), expanded (stride-0) views included, so an expanded view would save nothing: the tests
use real float16 tensors of 2^31 + 2^24 elements (4.3 GB each; peak about 10 GB, one op at a time). The input
holds a pattern of period 4093 (a prime: an index that wraps at 2^31 or 2^32 reads a different value), and each
result is checked on 2^20 random positions plus whole windows at the start, across the 2^31 boundary and at
the end of the output, against a float32 reference computed from the same inputs.

Marked slow (about 30-60 s on two CPU cores, most of it the kernel's first touch of ~20 GB of fresh pages);
CI runs it. Skipped, with the reason, where the machine lacks
the memory.
"""
import pytest
import torch
from conftest import DEVICES

from pyfastblocks import ops

H, W = 4099, 16493
NUMEL = 32 * H * W  # 2^31 + 15870176
assert NUMEL > 2**31 + 2**24 - 2**20
PERIOD = 4093
GIB = 2**30

pytestmark = pytest.mark.slow


def _available_bytes(device: str) -> int:
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()  # the current device, where "cuda" tensors go
        return free
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _pattern(n: int, device: str, period: int = PERIOD, multiplier: int = 1571, shift: int = 0) -> torch.Tensor:
    """A flat float16 tensor whose element i is p[(i + shift) % period]; p holds `period` distinct values
    (multiples of 1/256 in [-8, 8), exact in float16)."""
    k = torch.arange(period, device=device)
    p = ((((k + shift) * multiplier) % period) - period // 2).to(torch.float16) / 256
    out = torch.empty(n, dtype=torch.float16, device=device)
    whole = n // period
    out[: whole * period].view(whole, period).copy_(p.expand(whole, period))
    out[whole * period:].copy_(p[: n - whole * period])
    return out


@pytest.fixture(scope="module", params=DEVICES)
def big(request):
    device = request.param
    need = 10 * GIB if device == "cpu" else 12 * GIB
    if _available_bytes(device) < need + GIB:
        pytest.skip(f"needs {need / GIB + 1:.0f} GiB of free memory on {device}")
    flat = _pattern(NUMEL, device)
    yield device, flat
    del flat
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def _storage_samples(numel: int, device: str) -> torch.Tensor:
    """Storage positions to check: 2^20 random ones, and windows at the start, across 2^31 and at the end."""
    g = torch.Generator().manual_seed(0)
    windows = [torch.arange(0, 4096), torch.arange(2**31 - 65536, 2**31 + 65536), torch.arange(numel - 65536, numel)]
    idx = torch.cat([torch.randint(0, numel, (2**20,), generator=g)] + windows)
    return idx[idx < numel].to(device)


def _logical_index(storage_idx: torch.Tensor, shape, channels_last: bool):
    """(n, c, h, w) of the elements at these storage positions of a dense tensor of `shape` in that order."""
    n_, c_, h_, w_ = shape
    i = storage_idx
    if channels_last:  # storage order n, h, w, c
        c = i % c_
        i = i // c_
        w = i % w_
        i = i // w_
        h = i % h_
        n = i // h_
    else:
        w = i % w_
        i = i // w_
        h = i % h_
        i = i // h_
        c = i % c_
        n = i // c_
    return n, c, h, w


def _check(out: torch.Tensor, expected_at, channels_last: bool, what: str):
    assert out.is_contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    n, c, h, w = _logical_index(_storage_samples(out.numel(), out.device.type), out.shape, channels_last)
    got = out[n, c, h, w].float()
    ref = expected_at(n, c, h, w)
    bad = (got - ref).abs() > 2e-3 * (1 + ref.abs())
    if bad.any():
        first = int(bad.nonzero()[0, 0])
        flat = (((n[first] * out.shape[1] + c[first]) * out.shape[2] + h[first]) * out.shape[3] + w[first]).item()
        pytest.fail(f"{what}: {int(bad.sum())} wrong of {bad.numel()} checked; first at (n, c, h, w) = "
                    f"({n[first].item()}, {c[first].item()}, {h[first].item()}, {w[first].item()}) (NCHW offset {flat}): "
                    f"got {got[first].item()}, expected {ref[first].item()}")


def _params(device, channels):
    g = torch.Generator().manual_seed(1)
    return (torch.rand(channels, generator=g) + 0.5).to(device), torch.randn(channels, generator=g).to(device)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_add_relu_past_int32(big, channels_last):
    device, flat = big
    if channels_last:  # the same storage read as [N, H, W, C]
        x = flat.view(2, H, W, 16).permute(0, 3, 1, 2)
    else:
        x = flat.view(2, 16, H, W)
    s, b = _params(device, 16)
    out = ops.add_relu(x, x, s, b)  # residual = x: no second 4 GB input

    def expected(n, c, h, w):
        v = x[n, c, h, w].float()
        return torch.relu(v * s[c] + b[c] + v)

    _check(out, expected, channels_last, f"add_relu {'channels_last' if channels_last else 'NCHW'}")


def test_branch_concat_past_int32(big):
    """A 2^31-element branch and a small one: input offsets, output offsets and channel ranges past 2^31."""
    device, flat = big
    x0 = flat.view(1, 32, H, W)
    x1 = _pattern(H * W, device, period=4091, multiplier=1013).view(1, 1, H, W)
    s, b = _params(device, 33)
    out = ops.branch_concat([x0, x1], s, b, relu=False)

    def expected(n, c, h, w):
        v = torch.where(c < 32, x0[n, c.clamp(max=31), h, w], x1[n, (c - 32).clamp(min=0), h, w]).float()
        return v * s[c] + b[c]

    _check(out, expected, False, "branch_concat")
    del out, x1


def test_depthwise_conv2d_past_int32(big):
    """3x3, padding 1: the halo rows of every tap are addressed past 2^31 as well."""
    device, flat = big
    x = flat.view(1, 32, H, W)
    g = torch.Generator().manual_seed(2)
    weight = (torch.randint(-4, 5, (32, 1, 3, 3), generator=g) / 4).to(device, torch.float16)
    bias = torch.randn(32, generator=g).to(device)
    out = ops.depthwise_conv2d(x, weight, bias, 1, 1, 1, "none")

    def expected(n, c, h, w):
        acc = bias[c].clone()
        for dh in (-1, 0, 1):
            for dw in (-1, 0, 1):
                hh, ww = h + dh, w + dw
                inside = (hh >= 0) & (hh < H) & (ww >= 0) & (ww < W)
                v = x[n, c, hh.clamp(0, H - 1), ww.clamp(0, W - 1)].float()
                acc = acc + torch.where(inside, v, torch.zeros_like(v)) * weight[c, 0, dh + 1, dw + 1].float()
        return acc

    _check(out, expected, False, "depthwise_conv2d")
