"""One registry of the epilogue ops, in the manner of PyTorch's OpInfo: for each op, how to make its sample inputs,
how to call it with an activation, and its plain float64 reference. Every cross-cutting activation test
(tests/test_activations.py, tests/test_epilogue_programs.py) iterates it, so an op or an activation added to the
table is covered everywhere at once."""
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from conftest import make_layout

from pyfastblocks import activations, ops

# Every activation of the table, with the slopes that matter (leaky_relu: positive and negative; its gradient comes
# from the output only for a slope >= 0).
ACTIVATION_CASES = [(name, 0.01) for name in activations.NAMES if name != "leaky_relu"] + [
    ("leaky_relu", 0.2), ("leaky_relu", -0.3)]


def act_id(case) -> str:
    name, slope = case
    return f"{name}{slope:+g}" if name == "leaky_relu" else name


def reference_act(y: torch.Tensor, activation: str, negative_slope: float) -> torch.Tensor:
    return activations.get(activation).function(y, negative_slope)


def _channel(v: Optional[torch.Tensor], dim: int) -> torch.Tensor:
    return v.double().view([1, -1] + [1] * (dim - 2))


@dataclass
class EpilogueOp:
    """``make(dtype, device, layout, seed) -> list of tensors`` (the differentiable inputs, in order);
    ``fused(tensors, activation, slope)``; ``reference(float64 tensors, activation, slope)``."""

    name: str
    make: Callable
    fused: Callable
    reference: Callable
    # per-channel parameters among the tensors (their gradients are sums: compared with a scaled tolerance)
    param_positions: Sequence[int] = ()


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _param_dtype(dtype):
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _make_add(dtype, device, layout, seed=0, shape=(2, 8, 5, 6)):
    g = _gen(seed)
    x = make_layout(torch.randn(shape, generator=g).to(device, dtype), layout)
    r = make_layout(torch.randn(shape, generator=g).to(device, dtype), layout)
    c = shape[1]
    s = (torch.rand(c, generator=g) + 0.5).to(device, _param_dtype(dtype))
    b = torch.randn(c, generator=g).to(device, _param_dtype(dtype))
    return [x, r, s, b]


def _make_affine(dtype, device, layout, seed=0):
    x, _, s, b = _make_add(dtype, device, layout, seed)
    return [x, s, b]


BRANCHES = (3, 8, 5)


def _make_concat(dtype, device, layout, seed=0):
    g = _gen(seed)
    xs = [make_layout(torch.randn(2, c, 4, 6, generator=g).to(device, dtype), layout) for c in BRANCHES]
    total = sum(BRANCHES)
    s = (torch.rand(total, generator=g) + 0.5).to(device, _param_dtype(dtype))
    b = torch.randn(total, generator=g).to(device, _param_dtype(dtype))
    return xs + [s, b]


def _concat_ref(t, act, slope):
    xs, s, b = t[:-2], t[-2], t[-1]
    y = torch.cat([x.double() for x in xs], 1)
    return reference_act(y * _channel(s, 4) + _channel(b, 4), act, slope)


def _make_depthwise(dtype, device, layout, seed=0):
    g = _gen(seed)
    x = make_layout(torch.randn(2, 8, 7, 9, generator=g).to(device, dtype), layout)
    w = (torch.randn(16, 1, 3, 3, generator=g) * 0.5).to(device, dtype)  # multiplier 2
    b = torch.randn(16, generator=g).to(device, _param_dtype(dtype))
    return [x, w, b]


def _as_stored(z, dtype):
    """z as the fused ops keep an intermediate: in the data's dtype for half types (the depthwise backward
    recomputes the pre-activation into a tensor of x's dtype, as eager's convolution output is; at an activation's
    kink the rounded value decides the gradient's side)."""
    return z.to(dtype).double() if dtype in (torch.float16, torch.bfloat16) else z


def _depthwise_ref(t, act, slope):
    x, w, b = t
    return reference_act(_as_stored(F.conv2d(x.double(), w.double(), b.double(), 1, 1, 1, 8), x.dtype), act, slope)


def _make_separable(dtype, device, layout, seed=0):
    g = _gen(seed)
    x = make_layout(torch.randn(2, 4, 6, 5, generator=g).to(device, dtype), layout)
    dw = (torch.randn(8, 1, 3, 3, generator=g) * 0.5).to(device, dtype)
    db = torch.randn(8, generator=g).to(device, _param_dtype(dtype))
    pw = (torch.randn(6, 8, 1, 1, generator=g) * 0.5).to(device, dtype)
    pb = torch.randn(6, generator=g).to(device, _param_dtype(dtype))
    return [x, dw, db, pw, pb]


def _separable_ref(t, act, slope):
    x, dw, db, pw, pb = t
    mid = reference_act(_as_stored(F.conv2d(x.double(), dw.double(), db.double(), 2, 1, 1, 4), x.dtype), act, slope)
    return reference_act(_as_stored(F.conv2d(_as_stored(mid, x.dtype), pw.double(), pb.double()), x.dtype), act, slope)


OPS: List[EpilogueOp] = [
    EpilogueOp("add_act", _make_add, lambda t, a, s: ops.add_act(*t, activation=a, negative_slope=s),
               lambda t, a, s: reference_act(t[0].double() * _channel(t[2], t[0].dim()) + _channel(t[3], t[0].dim())
                                             + t[1].double(), a, s), (2, 3)),
    EpilogueOp("affine_act", _make_affine, lambda t, a, s: ops.affine_act(*t, activation=a, negative_slope=s),
               lambda t, a, s: reference_act(t[0].double() * _channel(t[1], 4) + _channel(t[2], 4), a, s), (1, 2)),
    EpilogueOp("branch_concat", _make_concat,
               lambda t, a, s: ops.branch_concat(list(t[:-2]), t[-2], t[-1], activation=a, negative_slope=s),
               _concat_ref, (len(BRANCHES), len(BRANCHES) + 1)),
    EpilogueOp("depthwise_conv2d", _make_depthwise,
               lambda t, a, s: ops.depthwise_conv2d(t[0], t[1], t[2], 1, 1, 1, activation=a, negative_slope=s),
               _depthwise_ref, (1, 2)),
    EpilogueOp("separable_conv2d", _make_separable,
               lambda t, a, s: ops.separable_conv2d(*t, stride=2, padding=1, depthwise_activation=a, activation=a,
                                                    depthwise_negative_slope=s, negative_slope=s),
               _separable_ref, (1, 2, 3, 4)),
]
OPS_BY_NAME = {op.name: op for op in OPS}
