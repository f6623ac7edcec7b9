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

by the CPU emulators of the CUDA programs (pyfastblocks._C._emulate_*: the same program choice the CUDA launchers
make, csrc/common/epilogue_programs.h and csrc/common/depthwise_tiled.h), so the list cannot drift from the code.
"""
import argparse
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from pyfastblocks import _C, ops
from pyfastblocks import activations as activation_table

# Activations per op: name -> the op's keyword arguments. The activation changes which memory a kernel touches in
# three ways only, so one of each is enough for the sanitizers (the arithmetic of every activation is checked on the
# CPU by the emulator tests): "none" (the backward reads no inputs), a ReLU-like one (the depthwise backward reads
# the saved output) and one that needs the pre-activation (the depthwise backward recomputes it: one more forward
# and a masking pass). `--all-activations` runs every entry of the table.
EPILOGUE_ACTIVATIONS: Dict[str, dict] = {
    "none": dict(activation="none"),
    "relu": dict(activation="relu"),
    "silu": dict(activation="silu"),
}
DEPTHWISE_ACTIVATIONS: Dict[str, dict] = {
    "none": dict(activation="none"),
    "relu6+input_relu": dict(activation="relu6", input_relu=True),
    "silu": dict(activation="silu"),
}
ALL_ACTIVATIONS: Dict[str, dict] = {
    **{name: dict(activation=name) for name in activation_table.NAMES},
    "leaky_relu-0.3": dict(activation="leaky_relu", negative_slope=-0.3),
}

ALL = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
TILED = (torch.float32, torch.float16, torch.bfloat16)  # the tiled depthwise programs' dtypes (float64: generic)
NAMES = {torch.float32: "float", torch.float16: "half", torch.bfloat16: "bfloat16", torch.float64: "double"}


def param_dtype(dtype: torch.dtype) -> torch.dtype:
    """Per-channel parameters as folded BatchNorm keeps them: float32, float64 for float64 data."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def make(shape: Sequence[int], layout: str, dtype: torch.dtype, device: str, offset: int = 0,
         requires_grad: bool = True, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Random data in the layout, starting `offset` elements into its storage (1: not 16-byte aligned)."""
    t = torch.randn(tuple(shape), generator=generator).to(device, dtype)
    if layout == "channels_last" and len(shape) == 4:
        t = t.contiguous(memory_format=torch.channels_last)
    if offset:
        storage = torch.empty(t.numel() + offset, dtype=dtype, device=device)
        view = storage[offset:].as_strided(t.shape, t.stride())
        view.copy_(t)
        t = view
    return t.requires_grad_(requires_grad)


# ------------------------------------------------------------------------------------------------------------
# add_act and branch_concat


@dataclass(frozen=True)
class Epilogue:
    """add_act(x, residual, scale, bias) or branch_concat(inputs, scale, bias), forward and backward.

    channels: (C,) for add_act, the branches' channel counts for branch_concat; spatial: (H, W), or () for
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

    def tensors(self, dtype: torch.dtype, device: str):
        shape = lambda c: (self.batch, c, *self.spatial)  # noqa: E731
        g = torch.Generator().manual_seed(0)
        xs = [make(shape(c), self.layout, dtype, device, self.offset, generator=g) for c in self.channels]
        total = sum(self.channels)
        pdt = param_dtype(dtype)
        scale = (torch.rand(total, generator=g) + 0.5).to(device, pdt) if "scale" in self.params else None
        bias = torch.randn(total, generator=g).to(device, pdt) if "bias" in self.params else None
        if scale is not None and self.grads == "all":
            scale.requires_grad_()
        if bias is not None and self.grads in ("all", "bias"):
            bias.requires_grad_()
        residual = make(shape(total), self.layout, dtype, device, self.offset, generator=g) if self.op == "add_act" \
            else None
        grad = make(shape(total), self.layout if total > 1 else NCHW, dtype, device, self.offset, requires_grad=False,
                    generator=g)
        return xs, residual, scale, bias, grad

    def run(self, dtype: torch.dtype, activation: dict, device: str) -> None:
        xs, residual, scale, bias, grad = self.tensors(dtype, device)
        if self.op == "add_act":
            y = ops.add_act(xs[0], residual, scale, bias, **activation)
        else:
            y = ops.branch_concat(xs, scale, bias, **activation)
        y.backward(grad)


def epilogue_kernels(case: Epilogue, dtype: torch.dtype) -> List[str]:
    """The programs the case launches on CUDA (forward, then backward), from the CPU emulator of the epilogue
    programs, called with what autograd hands the backward op (the inputs, which gradients are wanted)."""
    with torch.no_grad():
        xs, residual, scale, bias, grad = case.tensors(dtype, "cpu")
        want_params = any(p is not None and p.requires_grad for p in (scale, bias))
        if case.op == "add_act":
            _, forward = _C._emulate_add_act(xs[0], residual, scale, bias, "relu", 0.01)
            *_, backward = _C._emulate_add_act_backward(grad, xs[0], residual, scale, bias, "relu", 0.01, want_params)
        else:
            _, forward = _C._emulate_branch_concat(xs, scale, bias, "relu", 0.01)
            *_, backward = _C._emulate_branch_concat_backward(grad, list(case.channels), xs, scale, bias, "relu", 0.01,
                                                               want_params)
    return forward + backward


def expected_epilogue_kernels() -> List[str]:
    """What the epilogue cases must reach between them, per dtype: forwards and elementwise backwards with and
    without 16-byte packs, each per-channel parameter mode a width allows; the reducing backward over planes (NCHW)
    and rows (channels_last, [N, C]) with and without packs; the finish."""
    names = []
    for dtype in ALL:
        t, wide = NAMES[dtype], 16 // torch.empty((), dtype=dtype).element_size()
        for program in ("add_act_forward", "branch_concat_forward", "add_act_backward", "branch_concat_backward"):
            names += [f"{program}<{t},vec1,none>", f"{program}<{t},vec1,per_pack>"]
            names += [f"{program}<{t},vec{wide},{mode}>" for mode in ("none", "per_pack", "row_vector", "per_element")]
        names += [f"{kind}_reduce<{t},vec{vec}>" for kind in ("planes", "rows") for vec in (1, wide)]
    return names + ["reduce_finish<float>", "reduce_finish<double>"]


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
    # add_act: 16-byte packs with each parameter mode (run 16: per pack; channels_last C 16: a row vector;
    # run 35: per element, and a tail of numel % VEC), no parameters, scalar (offset 1); reducing backward over
    # planes and rows, with and without x (the gradient of scale) and grad_x; elementwise backward.
    E("add_act", (16,), (4, 4), NCHW),
    E("add_act", (16,), (4, 4), NCHW, grads="none"),
    E("add_act", (16,), (4, 4), NCHW, params="none"),
    E("add_act", (16,), (4, 4), NCHW, params="scale"),
    E("add_act", (16,), (4, 4), NCHW, grads="bias"),
    E("add_act", (16,), (4, 4), NCHW, params="bias"),
    E("add_act", (16,), (3, 3), CL),
    E("add_act", (16,), (3, 3), CL, grads="none"),
    E("add_act", (16,), (3, 3), CL, params="bias"),
    E("add_act", (16,), (3, 3), CL, grads="bias"),
    E("add_act", (16,), (), NCHW),
    E("add_act", (5,), (5, 7), NCHW),
    E("add_act", (5,), (5, 7), NCHW, grads="none"),
    E("add_act", (5,), (5, 7), NCHW, grads="bias"),
    E("add_act", (5,), (3, 3), CL, grads="none"),
    E("add_act", (5,), (3, 3), CL, params="bias"),
    E("add_act", (5,), (7, 3), NCHW, offset=1),
    E("add_act", (5,), (7, 3), NCHW, grads="none", offset=1),
    E("add_act", (5,), (7, 3), NCHW, params="bias", offset=1),
    E("add_act", (5,), (7, 3), CL, params="none", offset=1),
    E("add_act", (6,), (3, 3), CL, grads="bias", offset=1),
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
    return epilogue_kernels(case, dtype) if isinstance(case, Epilogue) else depthwise_kernels(case, dtype)


def expected_kernels() -> List[str]:
    return expected_epilogue_kernels() + expected_depthwise_kernels()


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


def run_all(device: str, only: Optional[str] = None, one_activation: bool = False,
            all_activations: bool = False) -> int:
    torch.manual_seed(0)
    runs = 0
    for case in CASES:
        if only and only not in case.label():
            continue
        for dtype in case.dtypes:
            activations = list((ALL_ACTIVATIONS if all_activations else case.activations()).items())
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
    p.add_argument("--all-activations", action="store_true", help="every activation of the table (default: one of "
                   "each kind of memory access)")
    args = p.parse_args(argv)
    if args.list:
        return 1 if list_cases() else 0
    return run_all(args.device, args.only, args.one_activation, args.all_activations)


if __name__ == "__main__":
    sys.exit(main())
