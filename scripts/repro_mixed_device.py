"""Mixed CPU/CUDA arguments must raise a clear error (a segfault was seen here on an H200): run one case."""
import sys

import torch

from pyfastblocks import ops

case = sys.argv[1]
x = torch.randn(2, 4, 3, 3)
r = torch.randn(2, 4, 3, 3)
kwargs = {
    "residual_cuda": dict(x=x, residual=r.cuda()),
    "scale_cuda": dict(x=x, residual=r, scale=torch.randn(4, device="cuda")),
    "x_cuda": dict(x=x.cuda(), residual=r),
    "scale_cpu": dict(x=x.cuda(), residual=r.cuda(), scale=torch.randn(4)),
}[case]
for mode in ("grad", "no_grad", "inference_mode"):
    ctx = {"grad": torch.enable_grad, "no_grad": torch.no_grad, "inference_mode": torch.inference_mode}[mode]
    try:
        with ctx():
            ops.add_relu(**kwargs)
        print(case, mode, "NO ERROR")
    except RuntimeError as e:
        print(case, mode, "RuntimeError:", str(e).splitlines()[0][:200])
