"""A small run of every CUDA kernel path, for compute-sanitizer (scripts/gpu_check.sh)."""
import torch

from pyfastblocks import ops


torch.manual_seed(0)
for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
    for shape in [(2, 8, 5, 7), (3, 5, 3, 3), (2, 64, 4, 4), (5, 3), (1, 1, 1, 1)]:
        for fmt in (torch.contiguous_format, torch.channels_last):
            if len(shape) != 4 and fmt is torch.channels_last:
                continue
            x = torch.randn(shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
            r = torch.randn(shape, device="cuda", dtype=dtype).requires_grad_()
            c = shape[1]
            s = (torch.rand(c, device="cuda") + 0.5).requires_grad_()
            b = torch.randn(c, device="cuda").requires_grad_()
            if dtype == torch.float64:
                s, b = s.detach().double().requires_grad_(), b.detach().double().requires_grad_()
            for args in [(s, b), (None, None), (s, None), (None, b)]:
                for relu in (True, False):
                    ops.add_relu(x, r, *args, relu=relu).sum().backward()
            # a view starting one element in: the scalar (unaligned) path
            flat = torch.randn(x.numel() + 1, device="cuda", dtype=dtype)[1:].view(shape)
            ops.add_relu(flat, flat, s.detach(), b.detach())
    for fmt in (torch.contiguous_format, torch.channels_last):
        for channels in ([3, 5, 7], [8, 16, 8], [64, 0, 32]):
            xs = [torch.randn(2, c, 5, 6, device="cuda", dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
                  for c in channels]
            pdt = torch.float64 if dtype == torch.float64 else torch.float32
            s = (torch.rand(sum(channels), device="cuda", dtype=pdt) + 0.5).requires_grad_()
            b = torch.randn(sum(channels), device="cuda", dtype=pdt).requires_grad_()
            for args in [(s, b), (None, None), (s, None), (None, b)]:
                for relu in (True, False):
                    ops.branch_concat(xs, *args, relu=relu).sum().backward()
    # Depthwise: every tiled program (3x3/5x5 at stride 1 and 2, dynamic shapes, NHWC vector and scalar, several
    # tiles, planes per block and weight-gradient chunks) and the generic kernels (multiplier 2 in NHWC, float64).
    depthwise_cases = (((3, 3), 1, 1, 1, 1), ((5, 3), 2, (2, 0), (1, 2), 2), ((3, 3), 2, 1, 1, 1),
                       ((5, 5), 1, 2, 1, 1), ((5, 5), 2, 2, 1, 1), ((7, 7), 1, 3, 1, 1))
    for fmt in (torch.contiguous_format, torch.channels_last):
        for shape in ((2, 6, 9, 8), (2, 16, 37, 70), (1, 8, 3, 2)):
            c = shape[1]
            x = torch.randn(shape, device="cuda", dtype=dtype).contiguous(memory_format=fmt).requires_grad_()
            for kernel, stride, padding, dilation, m in depthwise_cases:
                w = torch.randn(c * m, 1, *kernel, device="cuda", dtype=dtype).requires_grad_()
                b = torch.randn(c * m, device="cuda", dtype=torch.float64 if dtype == torch.float64 else torch.float32)
                for act, input_relu in (("none", False), ("relu6", True)):
                    y = ops.depthwise_conv2d(x, w, b.requires_grad_(), stride, padding, dilation, act, input_relu)
                    y.sum().backward()
torch.cuda.synchronize()
print("sanitizer workload done")
