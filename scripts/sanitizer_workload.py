"""One small run of every CUDA kernel of pyfastblocks, for compute-sanitizer memcheck and racecheck (the memcheck
and racecheck steps of scripts/gpu_check.sh).

The workload is a table of cases, one line each (CASES below): an op and the tensors it gets (shape, layout,
alignment, which parameters want gradients), which decide the kernel that runs. Every case runs forward and
backward for each of its dtypes and each activation of its op's table (EPILOGUE_ACTIVATIONS,
DEPTHWISE_ACTIVATIONS): a new op, kernel path or activation is one more line.

Which kernel a case picks is shown without a GPU:

    python scripts/sanitizer_workload.py            # run it (CUDA; under compute-sanitizer in the GPU check)
    python scripts/sanitizer_workload.py --list     # CPU only: each case and the kernels it picks, and the
                                                    # kernels no case picks (exit status 1 if any)

for depthwise_conv2d by the CPU emulator of the tiled programs (pyfastblocks._C._emulate_tiled_depthwise_*, the
same program choice the CUDA launcher makes), for the epilogue ops (add_relu, branch_concat) by `epilogue_kernels`
below, which restates the launchers' choice (csrc/cuda/*_kernel.cu: 16-byte packs or scalar, the per-channel
parameter mode, the elementwise or the reducing backward) and must follow them when they change.
"""
import argparse
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from pyfastblocks import _C, ops

# Activations per op: name -> the op's keyword arguments. The epilogue ops take relu=True/False today; the
# activation table (DESIGN.md: "silu", "hardswish", "gelu", "leaky_relu", ...) adds one line per activation, e.g.
# "silu": dict(activation="silu").
EPILOGUE_ACTIVATIONS: Dict[str, dict] = {
    "relu": dict(relu=True),
    "none": dict(relu=False),
}
DEPTHWISE_ACTIVATIONS: Dict[str, dict] = {
    "none": dict(activation="none"),
    "relu": dict(activation="relu"),
    "relu6+input_relu": dict(activation="relu6", input_relu=True),
}

ALL = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
TILED = (torch.float32, torch.float16, torch.bfloat16)  # the tiled depthwise programs' dtypes (float64: generic)
NAMES = {torch.float32: "float", torch.float16: "half", torch.bfloat16: "bfloat16", torch.float64: "double"}


def param_dtype(dtype: torch.dtype) -> torch.dtype:
    """Per-channel parameters as folded BatchNorm keeps them: float32, float64 for float64 data."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def make(shape: Sequence[int], layout: str, dtype: torch.dtype, device: str, offset: int = 0,
         requires_grad: bool = True) -> torch.Tensor:
    """Random data in the layout, starting `offset` elements into its storage (1: not 16-byte aligned)."""
    t = torch.randn(tuple(shape), device=device).to(dtype)
    if layout == "channels_last" and len(shape) == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    if offset:
        storage = torch.empty(t.numel() + offset, dtype=dtype, device=device)
        view = storage[offset:].as_strided(t.shape, t.stride())
        view.copy_(t)
        t = view
    return t.requires_grad_(requires_grad)


# ------------------------------------------------------------------------------------------------------------
# add_relu and branch_concat


@dataclass(frozen=True)
class Epilogue:
    """add_relu(x, residual, scale, bias) or branch_concat(inputs, scale, bias), forward and backward.

    channels: (C,) for add_relu, the branches' channel counts for branch_concat; spatial: (H, W), or () for
    [N, C]; params: which of scale/bias are passed; grads: which of them want gradients (any: the reducing
    backward; none: the elementwise one); offset: every input and the output gradient start this many elements
    into their storage (1: the scalar kernels)."""
    op: str
    channels: Tuple[int, ...]
    spatial: Tuple[int, ...]
    layout: str
    params: str = "scale+bias"  # "scale+bias", "scale", "bias", "none"
    grads: str = "all"  # "all" (those passed), "bias", "none"
    offset: int = 0
    batch: int = 2
    dtypes: Tuple[torch.dtype, ...] = ALL

    def label(self) -> str:
        what = "x".join(map(str, (self.batch, "+".join(map(str, self.channels)), *self.spatial)))
        return (f"{self.op} {what} {self.layout} params={self.params} grads={self.grads}"
                + (f" offset={self.offset}" if self.offset else ""))

    def activations(self) -> Dict[str, dict]:
        return EPILOGUE_ACTIVATIONS

    def run(self, dtype: torch.dtype, activation: dict, device: str) -> None:
        shape = lambda c: (self.batch, c, *self.spatial)  # noqa: E731
        xs = [make(shape(c), self.layout, dtype, device, self.offset) for c in self.channels]
        total = sum(self.channels)
        pdt = param_dtype(dtype)
        scale = (torch.rand(total, device=device, dtype=pdt) + 0.5) if "scale" in self.params else None
        bias = torch.randn(total, device=device, dtype=pdt) if "bias" in self.params else None
        if scale is not None and self.grads == "all":
            scale.requires_grad_()
        if bias is not None and self.grads in ("all", "bias"):
            bias.requires_grad_()
        if self.op == "add_relu":
            residual = make(shape(total), self.layout, dtype, device, self.offset)
            y = ops.add_relu(xs[0], residual, scale, bias, **activation)
        else:
            y = ops.branch_concat(xs, scale, bias, **activation)
        y.backward(make(y.shape, self.layout, dtype, device, self.offset, requires_grad=False))


def epilogue_kernels(case: Epilogue, dtype: torch.dtype) -> List[str]:
    """The kernels the case launches on CUDA (forward, then backward), as csrc/cuda/add_relu_kernel.cu,
    branch_concat_kernel.cu and epilogue_backward_kernel.cu choose them: 16-byte packs (VEC = 16 / element size)
    when every pointer is 16-byte aligned (fresh allocations are; an offset is not) and, for branch_concat and
    the reducing backward, the packs stay within a branch / plane; the per-channel parameter mode of the
    elementwise kernels (epilogue.cuh: pick_channel_mode)."""
    wide = 16 // torch.empty((), dtype=dtype).element_size()
    aligned = case.offset == 0
    channels_last = case.layout == "channels_last" and len(case.spatial) == 2
    run = 1
    if not channels_last:
        for s in case.spatial:
            run *= s
    total = sum(case.channels)
    scale, bias = "scale" in case.params, "bias" in case.params
    want_scale = scale and case.grads == "all"
    want_bias = bias and case.grads in ("all", "bias")

    def mode(vec: int, with_scale: bool, with_bias: bool) -> str:
        if not (with_scale or with_bias):
            return "none"
        if run % vec == 0:
            return "per_pack"
        if run == 1 and total % vec == 0:
            return "row_vector"
        return "per_element"

    if case.op == "add_relu":
        vec = wide if aligned else 1
    else:  # every branch segment (C_i * run) a whole number of packs
        vec = wide if aligned and all(c * run % wide == 0 for c in case.channels) else 1
    kernels = [f"{case.op}_forward vec{vec} {mode(vec, scale, bias)}"]
    if not (want_scale or want_bias):
        if case.op == "add_relu":  # grad_x only when there is a scale; the output gradient carries the offset
            kernels.append(f"add_relu_backward_elementwise vec{vec} {mode(vec, scale, False)}")
        else:
            kernels.append(f"branch_concat_backward vec{vec} {mode(vec, scale, False)}")
        return kernels
    has_x = want_scale  # x is read only for the gradient of scale
    write_gx = scale or case.op == "branch_concat"  # branch_concat always returns each input's gradient
    rvec = wide if aligned else 1  # grad_out carries the offset; saved inputs (has_x) too
    if run > 1:
        rvec = rvec if run % wide == 0 else 1
        kind = "planes"
    else:
        rvec = rvec if all(c % wide == 0 for c in case.channels) else 1
        kind = "rows"
    kernels.append(f"epilogue_backward_{kind} vec{rvec} x={int(has_x)} grad_x={int(write_gx)}")
    return kernels


def expected_epilogue_kernels() -> List[str]:
    """What the epilogue cases must reach between them (per dtype): forward and elementwise backward with and
    without 16-byte packs, each parameter mode; the reducing backward over planes (NCHW) and rows
    (channels_last, [N, C]) with and without packs, with and without x and grad_x."""
    names = []
    for op in ("add_relu_forward", "branch_concat_forward", "add_relu_backward_elementwise", "branch_concat_backward"):
        names += [f"{op} vec1 none", f"{op} vec1 per_pack", f"{op} vecW none", f"{op} vecW per_pack",
                  f"{op} vecW row_vector", f"{op} vecW per_element"]
    for kind in ("planes", "rows"):
        for vec in ("vec1", "vecW"):
            names += [f"epilogue_backward_{kind} {vec} x=1 grad_x=1", f"epilogue_backward_{kind} {vec} x=0 grad_x=1",
                      f"epilogue_backward_{kind} {vec} x=0 grad_x=0"]
    return names


# ------------------------------------------------------------------------------------------------------------
# depthwise_conv2d


@dataclass(frozen=True)
class Depthwise:
    """depthwise_conv2d(x, weight [C*m, 1, kh, kw], bias) forward and backward (every gradient wanted)."""
    channels: int
    size: Tuple[int, int]
    kernel: Tuple[int, int]
    stride: int
    padding: Tuple[int, int]
    layout: str
    dilation: int = 1
    multiplier: int = 1
    offset: int = 0
    batch: int = 2
    dtypes: Tuple[torch.dtype, ...] = TILED

    def label(self) -> str:
        k = f"{self.kernel[0]}x{self.kernel[1]}"
        return (f"depthwise {self.batch}x{self.channels}x{self.size[0]}x{self.size[1]} {self.layout} k{k} "
                f"s{self.stride} p{self.padding[0]},{self.padding[1]} d{self.dilation} m{self.multiplier}"
                + (f" offset={self.offset}" if self.offset else ""))

    def activations(self) -> Dict[str, dict]:
        return DEPTHWISE_ACTIVATIONS

    def conv_args(self):
        return [self.stride] * 2, list(self.padding), [self.dilation] * 2

    def tensors(self, dtype: torch.dtype, device: str):
        x = make((self.batch, self.channels, *self.size), self.layout, dtype, device, self.offset)
        oc = self.channels * self.multiplier
        weight = torch.randn(oc, 1, *self.kernel, device=device).to(dtype).requires_grad_()
        bias = torch.randn(oc, device=device, dtype=param_dtype(dtype)).requires_grad_()
        return x, weight, bias

    def run(self, dtype: torch.dtype, activation: dict, device: str) -> None:
        x, weight, bias = self.tensors(dtype, device)
        y = ops.depthwise_conv2d(x, weight, bias, *self.conv_args(), **activation)
        y.backward(make(y.shape, self.layout, dtype, device, self.offset, requires_grad=False))


def depthwise_kernels(case: Depthwise, dtype: torch.dtype) -> List[str]:
    """The programs the CUDA launcher picks for the case, from the CPU emulator (which shares the choice);
    "generic" (the plain kernels) is named by phase and dtype."""
    with torch.no_grad():
        x, weight, bias = case.tensors(dtype, "cpu")
        stride, padding, dilation = case.conv_args()
        _, forward = _C._emulate_tiled_depthwise_forward(x, weight, bias, stride, padding, dilation, "relu", False)
        out = F.conv2d(x.float(), weight.float(), None, stride, padding, dilation, groups=case.channels).to(dtype)
        if case.layout == "channels_last":
            out = out.contiguous(memory_format=torch.channels_last)
        grad_out = make(out.shape, case.layout, dtype, "cpu", case.offset, requires_grad=False)
        *_, backward = _C._emulate_tiled_depthwise_backward(grad_out, out, x, weight, stride, padding, dilation,
                                                            "relu", False, [True, True, True])
    t = NAMES[dtype]
    names = [f"generic_forward<{t}>" if p == "generic" else p for p in forward]
    names.append(f"generic_input_grad<{t}>" if backward[0] == "generic" else backward[0])
    names += [f"generic_param_grad<{t}>" if p == "generic" else p for p in backward[1:]]
    return names


def expected_depthwise_kernels() -> List[str]:
    """Every tiled program (csrc/common/depthwise_tiled.h: with_forward_program, with_input_grad_program,
    with_param_grad_programs) for each dtype, and the generic kernels for each dtype."""
    names = ["param_grad_finish"]
    for dtype in TILED:
        t, vec = NAMES[dtype], 16 // torch.empty((), dtype=dtype).element_size()
        for shape in ("3x3s1", "3x3s2", "5x5s1", "5x5s2", "dynamic"):
            names += [f"nchw_forward<{t},{shape}>", f"nchw_input_grad<{t},{shape}>",
                      f"nhwc_forward<{t},vec{vec},{shape}>", f"nhwc_input_grad<{t},vec{vec},{shape}>"]
        names += [f"nhwc_forward<{t},vec1,dynamic>", f"nhwc_input_grad<{t},vec1,dynamic>"]
        names += [f"{layout}_param_grad<{t},{k}>" for layout in ("nchw", "nhwc") for k in ("3x3", "5x5")]
    for dtype in ALL:
        names += [f"generic_{phase}<{NAMES[dtype]}>" for phase in ("forward", "input_grad", "param_grad")]
    return names


# ------------------------------------------------------------------------------------------------------------
# The cases: one line each.

E, D = Epilogue, Depthwise
CL, NCHW = "channels_last", "nchw"
CASES = [
    # add_relu: 16-byte packs with each parameter mode (run 16: per pack; channels_last C 16: a row vector;
    # run 35: per element, and a tail of numel % VEC), no parameters, scalar (offset 1); reducing backward over
    # planes and rows, with and without x (the gradient of scale) and grad_x; elementwise backward.
    E("add_relu", (16,), (4, 4), NCHW),
    E("add_relu", (16,), (4, 4), NCHW, grads="none"),
    E("add_relu", (16,), (4, 4), NCHW, params="none"),
    E("add_relu", (16,), (4, 4), NCHW, params="scale"),
    E("add_relu", (16,), (4, 4), NCHW, grads="bias"),
    E("add_relu", (16,), (4, 4), NCHW, params="bias"),
    E("add_relu", (16,), (3, 3), CL),
    E("add_relu", (16,), (3, 3), CL, grads="none"),
    E("add_relu", (16,), (3, 3), CL, params="bias"),
    E("add_relu", (16,), (3, 3), CL, grads="bias"),
    E("add_relu", (16,), (), NCHW),
    E("add_relu", (5,), (5, 7), NCHW),
    E("add_relu", (5,), (5, 7), NCHW, grads="none"),
    E("add_relu", (5,), (5, 7), NCHW, grads="bias"),
    E("add_relu", (5,), (3, 3), CL, grads="none"),
    E("add_relu", (5,), (3, 3), CL, params="bias"),
    E("add_relu", (5,), (7, 3), NCHW, offset=1),
    E("add_relu", (5,), (7, 3), NCHW, grads="none", offset=1),
    E("add_relu", (5,), (7, 3), NCHW, params="bias", offset=1),
    E("add_relu", (5,), (7, 3), CL, params="none", offset=1),
    E("add_relu", (6,), (3, 3), CL, grads="bias", offset=1),
    # branch_concat: the same paths over a branch table; branches whose segments are not whole packs (3, 5, 7
    # channels), an empty branch, 16 branches (the table's limit), one input (affine_relu).
    E("branch_concat", (8, 16, 8), (4, 4), NCHW),
    E("branch_concat", (8, 16, 8), (4, 4), NCHW, grads="none"),
    E("branch_concat", (8, 16, 8), (4, 4), NCHW, params="none"),
    E("branch_concat", (8, 16, 8), (4, 4), NCHW, grads="bias"),
    E("branch_concat", (8, 16, 8), (3, 3), CL),
    E("branch_concat", (8, 16, 8), (3, 3), CL, grads="none"),
    E("branch_concat", (8, 16, 8), (3, 3), CL, params="bias"),
    E("branch_concat", (8, 16, 8), (5, 7), NCHW, grads="none"),
    E("branch_concat", (3, 5, 7), (5, 6), NCHW),
    E("branch_concat", (3, 5, 7), (5, 6), NCHW, grads="none"),
    E("branch_concat", (3, 5, 7), (3, 3), CL),
    E("branch_concat", (3, 5, 7), (3, 3), CL, grads="bias"),
    E("branch_concat", (64, 0, 32), (5, 6), NCHW),
    E("branch_concat", (2,) * 16, (3, 3), CL),
    E("branch_concat", (16,), (4, 4), NCHW),
    E("branch_concat", (8, 16, 8), (4, 4), NCHW, offset=1),
    E("branch_concat", (8, 16, 8), (4, 4), NCHW, grads="none", offset=1),
    E("branch_concat", (8, 16, 8), (3, 3), CL, params="none", offset=1),
    E("branch_concat", (8, 16, 8), (3, 3), CL, grads="bias", offset=1),
    # depthwise_conv2d, NCHW tiled programs: 3x3 / 5x5 at stride 1 and 2 (compile-time shapes), 7x7 and a dilated
    # 3x3 (the dynamic shape; 7x7 takes the generic weight gradient), several tiles and weight-gradient chunks,
    # channel multiplier 2, a dilated 7x7 whose tile shrinks to fit 48 KB of shared memory.
    D(8, (13, 11), (3, 3), 1, (1, 1), NCHW),
    D(8, (13, 11), (3, 3), 2, (1, 1), NCHW),
    D(8, (12, 9), (5, 5), 1, (2, 2), NCHW),
    D(8, (17, 15), (5, 5), 2, (2, 2), NCHW),
    D(8, (15, 16), (7, 7), 1, (3, 3), NCHW),
    D(8, (14, 13), (3, 3), 1, (2, 2), NCHW, dilation=2),
    D(3, (70, 45), (3, 3), 1, (1, 1), NCHW),
    D(16, (37, 40), (3, 3), 1, (0, 1), NCHW),
    D(6, (9, 10), (3, 3), 1, (1, 1), NCHW, multiplier=2),
    D(2, (100, 100), (7, 7), 3, (3, 3), NCHW, dilation=8, batch=1),
    # NHWC: 16-byte channel vectors (C 16) for each shape, one channel at a time (C 6; offset 1), multiplier 2
    # (the generic forward and input gradient), several channel groups (C 264: more than 32 vectors), several
    # item blocks and weight-gradient chunks.
    D(16, (13, 11), (3, 3), 1, (1, 1), CL),
    D(16, (13, 11), (3, 3), 2, (1, 1), CL),
    D(16, (12, 9), (5, 5), 1, (2, 2), CL),
    D(16, (17, 15), (5, 5), 2, (2, 2), CL),
    D(16, (15, 16), (7, 7), 1, (3, 3), CL),
    D(16, (14, 13), (3, 3), 1, (2, 2), CL, dilation=2),
    D(6, (13, 11), (3, 3), 1, (1, 1), CL),
    D(16, (13, 11), (5, 5), 2, (2, 2), CL, offset=1),
    D(6, (9, 10), (3, 3), 1, (1, 1), CL, multiplier=2),
    D(264, (5, 6), (3, 3), 1, (1, 1), CL),
    D(16, (37, 40), (3, 3), 1, (1, 1), CL),
    # float64: the generic kernels only.
    D(8, (13, 11), (3, 3), 1, (1, 1), NCHW, dtypes=(torch.float64,)),
    D(6, (9, 10), (5, 5), 2, (2, 2), CL, multiplier=2, dtypes=(torch.float64,)),
]


def kernels_of(case, dtype: torch.dtype) -> List[str]:
    if isinstance(case, Epilogue):
        wide = 16 // torch.empty((), dtype=dtype).element_size()
        return [f"{k.replace(f'vec{wide} ', 'vecW ')} <{NAMES[dtype]}>" for k in epilogue_kernels(case, dtype)]
    return depthwise_kernels(case, dtype)


def expected_kernels() -> List[str]:
    names = [f"{k} <{NAMES[dtype]}>" for dtype in ALL for k in expected_epilogue_kernels()]
    return names + expected_depthwise_kernels()


def list_cases() -> int:
    """Print each case and the kernels it picks; return the number of expected kernels no case picks."""
    picked = set()
    for case in CASES:
        for dtype in case.dtypes:
            kernels = kernels_of(case, dtype)
            picked.update(kernels)
            print(f"{case.label()} {NAMES[dtype]}: {', '.join(kernels)}")
    missing = [k for k in expected_kernels() if k not in picked]
    runs = sum(len(c.dtypes) * len(c.activations()) for c in CASES)
    print(f"\n{len(CASES)} cases, {runs} runs (dtype x activation), {len(picked)} distinct kernels/programs")
    print(f"not picked by any case: {', '.join(missing) if missing else 'none'}")
    return len(missing)


def run_all(device: str, only: Optional[str] = None, one_activation: bool = False) -> int:
    torch.manual_seed(0)
    runs = 0
    for case in CASES:
        if only and only not in case.label():
            continue
        for dtype in case.dtypes:
            activations = list(case.activations().items())
            for name, activation in activations[:1] if one_activation else activations:
                try:
                    case.run(dtype, activation, device)
                except Exception as e:  # name the case, then stop: the sanitizer's report is what matters
                    print(f"FAILED: {case.label()} {NAMES[dtype]} {name}: {type(e).__name__}: {e}", file=sys.stderr)
                    raise
                runs += 1
    if device == "cuda":
        torch.cuda.synchronize()
    print(f"sanitizer workload done: {runs} runs of {len(CASES)} cases")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--list", action="store_true", help="print the kernels each case picks (CPU only, no GPU)")
    p.add_argument("--device", default="cuda", help="where to run the workload (default cuda)")
    p.add_argument("--only", default=None, help="run only the cases whose label contains this text")
    p.add_argument("--one-activation", action="store_true",
                   help="only the first activation of each op (racecheck: shared-memory accesses do not depend on "
                        "the activation, and racecheck is slow on the tiled programs)")
    args = p.parse_args(argv)
    if args.list:
        return 1 if list_cases() else 0
    return run_all(args.device, args.only, args.one_activation)


if __name__ == "__main__":
    sys.exit(main())
