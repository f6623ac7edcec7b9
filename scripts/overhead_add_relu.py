"""Per-call host overhead of add_relu on tiny tensors (where the GPU time is negligible), by grad mode."""
import torch
from torch.utils import benchmark

from pyfastblocks import ops

dev = "cuda" if torch.cuda.is_available() else "cpu"
x = torch.randn(2, 64, 4, 4, device=dev, dtype=torch.float16 if dev == "cuda" else torch.float32)
r, s, b = torch.randn_like(x), torch.rand(64, device=dev), torch.randn(64, device=dev)


def t(fn):
    return benchmark.Timer("fn()", globals={"fn": fn}).blocked_autorange(min_run_time=0.3).median * 1e6


for mode, ctx in (("grad", torch.enable_grad), ("no_grad", torch.no_grad), ("inference_mode", torch.inference_mode)):
    with ctx():
        print(f"{mode:15s} torch.add {t(lambda: torch.add(x, r)):6.1f} us | add+relu_ eager {t(lambda: torch.relu_(x + r)):6.1f} us"
              f" | ops.add_relu {t(lambda: ops.add_relu(x, r)):6.1f} us | with scale/bias {t(lambda: ops.add_relu(x, r, s, b)):6.1f} us")
