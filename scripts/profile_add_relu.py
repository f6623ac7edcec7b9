"""One large add_relu forward per variant, for Nsight Compute (scripts/gpu_check.sh)."""
import torch

from pyfastblocks import ops

for dtype, fmt in ((torch.float16, torch.channels_last), (torch.float32, torch.contiguous_format)):
    x = torch.randn(64, 256, 56, 56, device="cuda", dtype=dtype).contiguous(memory_format=fmt)
    r = torch.randn_like(x)
    s, b = torch.rand(256, device="cuda"), torch.randn(256, device="cuda")
    ops.add_relu(x, r)
    ops.add_relu(x, r, s, b)
torch.cuda.synchronize()
