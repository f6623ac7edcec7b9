"""Bad input for every public op, raw op and module: a clear error that names the argument, never a crash and
never a silent result (issue 8).

The table below is the whole test: one line of code per case, run against the ready-made tensors of
`make_namespace` (on every device of conftest.DEVICES), with the regex its error message must match. Cases with
`isolate=True` (undefined tensors, tensors on the `meta` device, overflowing sizes, raw backward ops fed
inconsistent tensors, mixed real devices) run in a separate worker process, so a segfault or abort fails that
case instead of killing the run. To add an op or module, add its lines to `CASES`.

`test_bad_input_under_fake_tensors` runs the op cases under FakeTensorMode (what torch.compile/export trace
with): the fake impls may be more lenient than the kernels, but where they raise, the error must name the
argument too (no ZeroDivisionError from a stride of 0).

`test_double_backward_raises_or_is_correct`: the ops have no double backward; backpropagating through their
backward (create_graph=True) must raise, not silently give zero second derivatives.

Cases marked `xfail=` are known bugs (see the reason); they are strict, so a fix makes them fail until the mark
is removed.
"""
import dataclasses
import json
import os
import re
import selectors
import subprocess
import sys
from typing import Tuple

import pytest
import torch
from conftest import DEVICES

import pyfastblocks
from pyfastblocks import ops

ALL = (RuntimeError, ValueError, TypeError, NotImplementedError, IndexError)


@dataclasses.dataclass
class Case:
    id: str
    code: str  # one statement, run in make_namespace(device)
    match: str  # regex (re.search) the message must match: it names the argument
    exc: Tuple[type, ...] = ALL
    isolate: bool = False  # run in the crash-isolating worker process
    needs: str = ""  # "alt": a second real device (CUDA when testing CPU, CPU when testing CUDA); "cuda2"
    xfail: str = ""  # a known bug: why this case fails today
    forbid: str = ""  # regex the message must NOT match
    fake: bool = True  # also run under FakeTensorMode (op cases only)


def make_namespace(device: str) -> dict:
    """The names every case can use: small valid tensors on `device` (each case spoils one argument)."""
    import torch.nn as tnn
    import torch.nn.functional as F

    from pyfastblocks import nn, ops

    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float32):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)

    alt = None
    if device.startswith("cuda"):
        alt = "cpu"
    elif torch.cuda.is_available():
        alt = "cuda"
    dev2 = "cuda:1" if device.startswith("cuda") and torch.cuda.device_count() > 1 else None
    x4 = randn(2, 4, 5, 5)
    return dict(
        torch=torch, ops=ops, nn=nn, tnn=tnn, F=F, fb=torch.ops.fastblocks, dev=device, alt=alt, dev2=dev2,
        # add_relu / affine_relu: x4 [2, 4, 5, 5], its residual, per-channel scale and bias
        x4=x4, r4=randn(2, 4, 5, 5), s4=randn(4).abs() + 0.5, b4=randn(4), g4=randn(2, 4, 5, 5), v5=randn(5),
        # branch_concat: 3 + 4 = 7 channels
        xa=randn(2, 3, 5, 5), xb=randn(2, 4, 5, 5), s7=randn(7).abs() + 0.5, o7=randn(2, 7, 5, 5),
        # depthwise / separable: 8x8 input, 3x3 kernel -> 6x6 output; pointwise 4 -> 6 channels
        xd=randn(2, 4, 8, 8), dw=randn(4, 1, 3, 3), db=randn(4), od=randn(2, 4, 6, 6), pw=randn(6, 4, 1, 1),
        pb=randn(6),
    )


def C(id, code, match, **kw) -> Case:
    return Case(id, code, match, **kw)



CASES = [
    # ---------------------------------------------------------------------------------------------- add_relu
    C("add_relu-x-rank1", "ops.add_relu(v5, v5)", r"'x'.*rank >= 2"),
    C("add_relu-x-rank0", "ops.add_relu(v5[0], v5[0])", r"'x'.*rank >= 2"),
    C("add_relu-x-not-a-tensor", "ops.add_relu([1.0, 2.0], r4)", r"'x'"),
    C("add_relu-residual-shape", "ops.add_relu(x4, r4[:, :, :, :4])", r"'residual'.*shape"),
    C("add_relu-residual-broadcast", "ops.add_relu(x4, r4[:1])", r"'residual'.*no broadcasting"),
    C("add_relu-residual-dtype", "ops.add_relu(x4, r4.double())", r"'residual'.*dtype"),
    C("add_relu-int32", "ops.add_relu(x4.int(), r4.int())", r"'x'.*float32"),
    C("add_relu-int64", "ops.add_relu(x4.long(), r4.long())", r"'x'.*float32"),
    C("add_relu-bool", "ops.add_relu(x4 > 0, r4 > 0)", r"'x'.*float32"),
    C("add_relu-uint8", "ops.add_relu(x4.to(torch.uint8), r4.to(torch.uint8))", r"'x'.*float32"),
    C("add_relu-complex", "ops.add_relu(x4.to(torch.complex64), r4.to(torch.complex64))", r"'x'.*float32"),
    C("add_relu-scale-size", "ops.add_relu(x4, r4, s4[:3])", r"'scale'.*\[4\]"),
    C("add_relu-scale-2d", "ops.add_relu(x4, r4, s4.view(4, 1))", r"'scale'.*1-D"),
    C("add_relu-scale-0d", "ops.add_relu(x4, r4, s4[0])", r"'scale'.*1-D"),
    C("add_relu-scale-int", "ops.add_relu(x4, r4, s4.int())", r"'scale'.*dtype"),
    C("add_relu-scale-half-for-float-x", "ops.add_relu(x4, r4, s4.half())", r"'scale'.*dtype"),
    C("add_relu-scale-complex", "ops.add_relu(x4, r4, s4.to(torch.complex64))", r"'scale'.*dtype"),
    C("add_relu-bias-size", "ops.add_relu(x4, r4, s4, torch.cat([b4, b4]))", r"'bias'.*\[4\]"),
    C("add_relu-bias-float64", "ops.add_relu(x4, r4, s4, b4.double())", r"'bias'.*dtype"),
    C("add_relu-relu-not-bool", "ops.add_relu(x4, r4, relu='yes')", r"'relu'"),
    C("add_relu-sparse", "ops.add_relu(x4.to_sparse(), r4.to_sparse())", r"add_act.*Sparse", fake=False),
    C("add_relu-residual-none", "ops.add_relu(x4, None)", r"'residual'", isolate=True, fake=False),
    C("add_relu-residual-meta", "ops.add_relu(x4, r4.to('meta'))", r"'residual'.*device", isolate=True, fake=False),
    C("add_relu-scale-meta", "ops.add_relu(x4, r4, s4.to('meta'))", r"'scale'.*device", isolate=True, fake=False),
    C("add_relu-residual-other-device", "ops.add_relu(x4, r4.to(alt))", r"'residual'.*device", isolate=True, needs="alt", fake=False),
    C("add_relu-scale-other-device", "ops.add_relu(x4, r4, s4.to(alt))", r"'scale'.*device", isolate=True, needs="alt", fake=False),
    C("add_relu-residual-second-gpu", "ops.add_relu(x4, r4.to(dev2))", r"'residual'.*device", isolate=True, needs="cuda2", fake=False),
    C("add_relu-relu-int", "ops.add_relu(x4, r4, relu=1)", r"'relu'"),
    C("add_act-activation-unknown", "ops.add_act(x4, r4, activation='swish2')", r"'activation'.*silu"),
    C("add_act-activation-case", "ops.add_act(x4, r4, activation='SiLU')", r"'activation'"),
    C("add_act-activation-none-object", "ops.add_act(x4, r4, activation=None)", r"'activation'"),
    C("add_act-negative-slope-nan", "ops.add_act(x4, r4, activation='leaky_relu', negative_slope=float('nan'))", r"'negative_slope'.*finite"),
    C("add_act-negative-slope-str", "ops.add_act(x4, r4, activation='leaky_relu', negative_slope='0.1')", r"'negative_slope'"),
    C("add_act-raw-activation-unknown", "fb.add_act(x4, r4, None, None, 'swish2', 0.01)", r"'activation'"),
    # ------------------------------------------------------------------------------- add_act_backward (raw op)
    C("add_act_backward-x-shape", "fb.add_act_backward(g4, x4[:, :3], r4, None, None, 'relu', 0.01, False)", r"'x'.*shape", isolate=True),
    C("add_act_backward-x-dtype", "fb.add_act_backward(g4, x4.double(), r4, None, None, 'relu', 0.01, False)", r"'x'.*dtype", isolate=True),
    C("add_act_backward-residual-shape", "fb.add_act_backward(g4, x4, r4[:, :, :2], None, None, 'relu', 0.01, False)", r"'residual'.*shape", isolate=True),
    C("add_act_backward-grad_out-int", "fb.add_act_backward(g4.int(), None, None, None, None, 'none', 0.01, False)", r"'grad_out'.*float32"),
    C("add_act_backward-grad_out-rank1", "fb.add_act_backward(v5, None, None, None, None, 'none', 0.01, False)", r"'grad_out'.*rank >= 2"),
    C("add_act_backward-x-missing", "fb.add_act_backward(g4, None, r4, None, None, 'silu', 0.01, False)", r"'x'.*required"),
    C("add_act_backward-scale-size", "fb.add_act_backward(g4, x4, r4, s4[:2], None, 'relu', 0.01, False)", r"'scale'.*\[4\]"),
    C("add_act_backward-activation", "fb.add_act_backward(g4, x4, r4, None, None, 'swish2', 0.01, False)", r"'activation'"),
    C("add_act_backward-grad_out-none", "fb.add_act_backward(None, x4, r4, None, None, 'relu', 0.01, False)", r"'grad_out'", isolate=True, fake=False),
    C("add_act_backward-x-meta", "fb.add_act_backward(g4, x4.to('meta'), r4, None, None, 'relu', 0.01, False)", r"'x'.*device", isolate=True, fake=False),
    # ------------------------------------------------------------------------------------------ branch_concat
    C("branch_concat-empty", "ops.branch_concat([])", r"'inputs'.*at least one", fake=False),
    C("branch_concat-65-inputs", "ops.branch_concat([xa] * 65)", r"'inputs'.*at most 64"),
    C("branch_concat-spatial-mismatch", "ops.branch_concat([xa, xb[:, :, :4]])", r"'inputs\[1\]'.*every dim but 1"),
    C("branch_concat-batch-mismatch", "ops.branch_concat([xa, xb[:1]])", r"'inputs\[1\]'.*every dim but 1"),
    C("branch_concat-rank-mismatch", "ops.branch_concat([xa, xb[0]])", r"'inputs\[1\]'.*(every dim but 1|rank)"),
    C("branch_concat-dtype-mismatch", "ops.branch_concat([xa, xb.double()])", r"'inputs\[1\]'.*dtype"),
    C("branch_concat-bool-branch", "ops.branch_concat([xa, xb > 0])", r"'inputs\[1\]'.*dtype"),
    C("branch_concat-int", "ops.branch_concat([xa.int(), xb.int()])", r"'inputs\[0\]'.*float32"),
    C("branch_concat-complex", "ops.branch_concat([xa.to(torch.complex64)])", r"'inputs\[0\]'.*float32"),
    C("branch_concat-rank1", "ops.branch_concat([v5])", r"'inputs\[0\]'.*rank >= 2"),
    C("branch_concat-scale-size", "ops.branch_concat([xa, xb], s7[:6])", r"'scale'.*\[7\]"),
    C("branch_concat-bias-2d", "ops.branch_concat([xa, xb], None, s7.view(7, 1))", r"'bias'.*1-D"),
    C("branch_concat-scale-int", "ops.branch_concat([xa, xb], s7.long())", r"'scale'.*dtype", forbid=r"of 'x'"),
    C("branch_concat-inputs-is-a-tensor", "ops.branch_concat(xb)", r"'inputs'"),
    C("branch_concat-none-in-list", "ops.branch_concat([xa, None])", r"'inputs'"),
    # The raw op with no tensor at all cannot name 'inputs': the dispatcher needs a tensor to pick a kernel and
    # fails before any of ours runs ("There were no tensor arguments to this function"). The documented entry
    # point, ops.branch_concat (case branch_concat-empty), names it; this case pins the raw op's behaviour.
    C("branch_concat-raw-empty", "fb.branch_concat([], None, None, 'relu', 0.01)", r"tensor arguments", exc=(RuntimeError,),
      fake=False),
    C("branch_concat-branch-meta", "ops.branch_concat([xa, xb.to('meta')])", r"'inputs\[1\]'.*device", isolate=True, fake=False),
    C("branch_concat-scale-meta", "ops.branch_concat([xa, xb], s7.to('meta'))", r"'scale'.*device", isolate=True, fake=False),
    C("branch_concat-branch-other-device", "ops.branch_concat([xa, xb.to(alt)])", r"'inputs\[1\]'.*device", isolate=True, needs="alt", fake=False),
    C("branch_concat-scale-other-device", "ops.branch_concat([xa, xb], s7.to(alt))", r"'scale'.*device", isolate=True, needs="alt", fake=False),
    C("branch_concat-branch-second-gpu", "ops.branch_concat([xa, xb.to(dev2)])", r"'inputs\[1\]'.*device", isolate=True, needs="cuda2", fake=False),
    # ------------------------------------------------------------------------- branch_concat_backward (raw op)
    C("branch_concat-activation-unknown", "ops.branch_concat([xa, xb], activation='swish2')", r"'activation'"),
    C("branch_concat-relu-not-bool", "ops.branch_concat([xa, xb], relu='yes')", r"'relu'"),
    C("branch_concat_backward-channels-sum", "fb.branch_concat_backward(o7, [3, 3], [], None, None, 'none', 0.01, False)", r"'channels'.*add up", isolate=True),
    C("branch_concat_backward-channels-negative", "fb.branch_concat_backward(o7, [8, -1], [], None, None, 'none', 0.01, False)", r"'channels'.*non-negative", isolate=True),
    C("branch_concat_backward-channels-empty", "fb.branch_concat_backward(o7, [], [], None, None, 'none', 0.01, False)", r"'channels'", isolate=True),
    C("branch_concat_backward-channels-65", "fb.branch_concat_backward(o7, [1] * 7 + [0] * 58, [], None, None, 'none', 0.01, False)", r"'channels'.*64", isolate=True),
    C("branch_concat_backward-inputs-count", "fb.branch_concat_backward(o7, [3, 4], [xa], s7, None, 'relu', 0.01, True)", r"'inputs'.*one tensor per branch", isolate=True),
    C("branch_concat_backward-input-shape", "fb.branch_concat_backward(o7, [3, 4], [xa, xa], s7, None, 'relu', 0.01, True)", r"'inputs\[1\]'.*shape", isolate=True),
    C("branch_concat_backward-inputs-missing", "fb.branch_concat_backward(o7, [3, 4], [], s7, None, 'gelu', 0.01, False)", r"'inputs'.*required", isolate=True),
    C("branch_concat_backward-activation", "fb.branch_concat_backward(o7, [3, 4], [xa, xb], s7, None, 'swish2', 0.01, False)", r"'activation'"),
    C("branch_concat_backward-grad_out-none", "fb.branch_concat_backward(None, [3, 4], [xa, xb], None, None, 'relu', 0.01, False)", r"'grad_out'", isolate=True, fake=False),
    # -------------------------------------------------------------------------------------------- affine_relu
    C("affine_relu-rank1", "ops.affine_relu(v5)", r"'x'.*rank >= 2"),
    C("affine_relu-int", "ops.affine_relu(x4.int())", r"'x'.*float32"),
    C("affine_relu-scale-size", "ops.affine_relu(x4, s4[:3])", r"'scale'.*\[4\]"),
    C("affine_relu-bias-dtype", "ops.affine_relu(x4, s4, b4.double())", r"'bias'.*dtype"),
    C("affine_relu-scale-other-device", "ops.affine_relu(x4, s4.to(alt))", r"'scale'.*device", isolate=True, needs="alt", fake=False),
    C("affine_relu-relu-not-bool", "ops.affine_relu(x4, relu='no')", r"'relu'"),
    C("affine_act-activation-unknown", "ops.affine_act(x4, activation='mish2')", r"'activation'.*gelu_tanh"),
    C("affine_act-rank1", "ops.affine_act(v5, activation='silu')", r"'x'.*rank >= 2"),
    # --------------------------------------------------------------------------------------- depthwise_conv2d
    C("depthwise-x-3d", "ops.depthwise_conv2d(xd[0], dw)", r"'x'.*4-D"),
    C("depthwise-x-5d", "ops.depthwise_conv2d(xd[None], dw)", r"'x'.*4-D"),
    C("depthwise-x-int", "ops.depthwise_conv2d(xd.int(), dw.int())", r"'x'.*float32"),
    C("depthwise-x-complex", "ops.depthwise_conv2d(xd.to(torch.complex64), dw.to(torch.complex64))", r"'x'.*float32"),
    C("depthwise-x-no-channels", "ops.depthwise_conv2d(xd[:, :0], dw[:0])", r"'x'.*channel"),
    C("depthwise-x-too-small", "ops.depthwise_conv2d(xd[:, :, :2, :2], dw)", r"'x'.*too small"),
    C("depthwise-weight-3d", "ops.depthwise_conv2d(xd, dw[:, 0])", r"'weight'.*\[C \* m, 1, kh, kw\]"),
    C("depthwise-weight-dim1", "ops.depthwise_conv2d(xd, dw.expand(4, 2, 3, 3))", r"'weight'.*\[C \* m, 1, kh, kw\]"),
    C("depthwise-weight-not-multiple", "ops.depthwise_conv2d(xd, torch.cat([dw, dw[:2]]))", r"'weight'.*\[C \* m, 1, kh, kw\]"),
    C("depthwise-weight-empty-kernel", "ops.depthwise_conv2d(xd, dw[:, :, :0])", r"'weight'.*\[C \* m, 1, kh, kw\]"),
    C("depthwise-weight-dtype", "ops.depthwise_conv2d(xd, dw.double())", r"'weight'.*dtype"),
    C("depthwise-stride-0", "ops.depthwise_conv2d(xd, dw, stride=0)", r"'stride'.*positive"),
    C("depthwise-stride-negative", "ops.depthwise_conv2d(xd, dw, stride=(1, -2))", r"'stride'.*positive"),
    C("depthwise-stride-triple", "ops.depthwise_conv2d(xd, dw, stride=(1, 1, 1))", r"'stride'"),
    C("depthwise-stride-float", "ops.depthwise_conv2d(xd, dw, stride=1.5)", r"'stride'"),
    C("depthwise-stride-none", "ops.depthwise_conv2d(xd, dw, stride=None)", r"'stride'"),
    C("depthwise-padding-negative", "ops.depthwise_conv2d(xd, dw, padding=-1)", r"'padding'.*non-negative"),
    C("depthwise-dilation-0", "ops.depthwise_conv2d(xd, dw, dilation=(1, 0))", r"'dilation'.*positive"),
    C("depthwise-activation-unknown", "ops.depthwise_conv2d(xd, dw, activation='swish2')", r"'activation'.*relu6"),
    C("depthwise-negative-slope-inf", "ops.depthwise_conv2d(xd, dw, activation='leaky_relu', negative_slope=float('inf'))", r"'negative_slope'.*finite"),
    C("depthwise-activation-case", "ops.depthwise_conv2d(xd, dw, activation='ReLU')", r"'activation'.*relu6"),
    C("depthwise-activation-none", "ops.depthwise_conv2d(xd, dw, activation=None)", r"'activation'"),
    C("depthwise-input_relu-not-bool", "ops.depthwise_conv2d(xd, dw, input_relu='no')", r"'input_relu'"),
    C("depthwise-bias-size", "ops.depthwise_conv2d(xd, dw, db[:3])", r"'bias'.*\[4\]"),
    C("depthwise-bias-2d", "ops.depthwise_conv2d(xd, dw, db.view(4, 1))", r"'bias'.*1-D"),
    C("depthwise-bias-int", "ops.depthwise_conv2d(xd, dw, db.int())", r"'bias'.*dtype"),
    C("depthwise-size-overflow", "ops.depthwise_conv2d(xd, dw, padding=2**62, dilation=2**61 + 1)", r"'padding'|'dilation'", isolate=True),
    C("depthwise-weight-none", "ops.depthwise_conv2d(xd, None)", r"'weight'", isolate=True, fake=False),
    C("depthwise-weight-meta", "ops.depthwise_conv2d(xd, dw.to('meta'))", r"'weight'.*device", isolate=True, fake=False),
    C("depthwise-weight-other-device", "ops.depthwise_conv2d(xd, dw.to(alt))", r"'weight'.*device", isolate=True, needs="alt", fake=False),
    C("depthwise-bias-other-device", "ops.depthwise_conv2d(xd, dw, db.to(alt))", r"'bias'.*device", isolate=True, needs="alt", fake=False),
    # ---------------------------------------------------------------------- depthwise_conv2d_backward (raw op)
    C("depthwise_backward-out-shape", "fb.depthwise_conv2d_backward(od, od[:, :, :5], xd, dw, None, [1, 1], [0, 0], [1, 1], 'relu', 0.01, False, [True, True, True])", r"'out'.*shape", isolate=True),
    C("depthwise_backward-out-missing", "fb.depthwise_conv2d_backward(od, None, xd, dw, None, [1, 1], [0, 0], [1, 1], 'relu', 0.01, False, [True, True, True])", r"'out'.*required", isolate=True),
    C("depthwise_backward-grad_out-shape", "fb.depthwise_conv2d_backward(od[:, :, :5], od, xd, dw, None, [1, 1], [0, 0], [1, 1], 'none', 0.01, False, [True, True, True])", r"'grad_out'.*shape", isolate=True),
    C("depthwise_backward-grad_out-dtype", "fb.depthwise_conv2d_backward(od.double(), od, xd, dw, None, [1, 1], [0, 0], [1, 1], 'none', 0.01, False, [True, True, True])", r"'grad_out'.*dtype", isolate=True),
    C("depthwise_backward-stride-mismatch", "fb.depthwise_conv2d_backward(od, od, xd, dw, None, [2, 2], [0, 0], [1, 1], 'none', 0.01, False, [True, True, True])", r"'grad_out'.*shape", isolate=True),
    C("depthwise_backward-activation", "fb.depthwise_conv2d_backward(od, od, xd, dw, None, [1, 1], [0, 0], [1, 1], 'swish2', 0.01, False, [True, True, True])", r"'activation'"),
    C("depthwise_backward-bias-size", "fb.depthwise_conv2d_backward(od, None, xd, dw, db[:3], [1, 1], [0, 0], [1, 1], 'silu', 0.01, False, [True, True, True])", r"'bias'.*\[4\]", isolate=True),
    C("depthwise_backward-grad_out-none", "fb.depthwise_conv2d_backward(None, od, xd, dw, None, [1, 1], [0, 0], [1, 1], 'none', 0.01, False, [True, True, True])", r"'grad_out'", isolate=True, fake=False),
    C("depthwise_backward-weight-meta", "fb.depthwise_conv2d_backward(od, od, xd, dw.to('meta'), None, [1, 1], [0, 0], [1, 1], 'none', 0.01, False, [True, True, True])", r"'weight'.*device", isolate=True, fake=False),
    # --------------------------------------------------------------------------------------- separable_conv2d
    C("separable-pointwise-2d", "ops.separable_conv2d(xd, dw, None, pw[:, :, 0, 0])", r"'pointwise_weight'.*\[C_out, C_mid, 1, 1\]"),
    C("separable-pointwise-3x3", "ops.separable_conv2d(xd, dw, None, pw.expand(6, 4, 3, 3))", r"'pointwise_weight'.*\[C_out, C_mid, 1, 1\]"),
    C("separable-pointwise-channels", "ops.separable_conv2d(xd, dw, None, torch.cat([pw, pw], 1))", r"'pointwise_weight'.*input channels"),
    C("separable-pointwise-dtype", "ops.separable_conv2d(xd, dw, None, pw.double())", r"'pointwise_weight'.*dtype"),
    C("separable-pointwise-bias-size", "ops.separable_conv2d(xd, dw, None, pw, pb[:5])", r"'pointwise_bias'.*(\[6\]|\[C_out\])"),
    C("separable-pointwise-bias-bool", "ops.separable_conv2d(xd, dw, None, pw, pb > 0)", r"'pointwise_bias'.*dtype"),
    C("separable-pointwise-bias-complex", "ops.separable_conv2d(xd, dw, None, pw, pb.to(torch.complex64))", r"'pointwise_bias'.*dtype"),
    C("separable-activation", "ops.separable_conv2d(xd, dw, None, pw, activation='swish2')", r"'activation'.*relu6"),
    C("separable-depthwise-activation", "ops.separable_conv2d(xd, dw, None, pw, depthwise_activation='swish2')", r"'depthwise_activation'"),
    C("separable-depthwise-negative-slope", "ops.separable_conv2d(xd, dw, None, pw, depthwise_activation='leaky_relu', depthwise_negative_slope=float('nan'))", r"'depthwise_negative_slope'"),
    C("separable-depthwise-weight", "ops.separable_conv2d(xd, dw.expand(4, 2, 3, 3), None, pw)", r"'depthwise_weight'"),
    C("separable-depthwise-bias", "ops.separable_conv2d(xd, dw, db[:3], pw)", r"'depthwise_bias'"),
    C("separable-message-prefix", "ops.separable_conv2d(xd, dw, None, pw[:, :, 0, 0])", r"^fastblocks::separable_conv2d: argument 'pointwise_weight'"),
    C("separable-stride-0", "ops.separable_conv2d(xd, dw, None, pw, stride=0)", r"'stride'.*positive"),
    C("separable-x-int", "ops.separable_conv2d(xd.int(), dw.int(), None, pw.int())", r"'x'.*float32"),
    C("separable-x-3d", "ops.separable_conv2d(xd[0], dw, None, pw)", r"'x'.*4-D"),
    C("separable-pointwise-meta", "ops.separable_conv2d(xd, dw, None, pw.to('meta'))", r"'pointwise_weight'.*device", isolate=True, fake=False),
    C("separable-pointwise-bias-meta", "ops.separable_conv2d(xd, dw, None, pw, pb.to('meta'))", r"'pointwise_bias'.*device", isolate=True, fake=False),
    C("separable-pointwise-other-device", "ops.separable_conv2d(xd, dw, None, pw.to(alt))", r"'pointwise_weight'.*device", isolate=True, needs="alt", fake=False),
    # ------------------------------------------------------------------------------------------------ modules
    C("BNAddReLU-x-3d", "nn.BNAddReLU(4).to(dev)(x4[0], r4[0])", r"'x'.*4-D", fake=False),
    C("BNAddReLU-x-channels", "nn.BNAddReLU(3).to(dev)(x4, r4)", r"'x'.*channels", fake=False),
    C("BNAddReLU-residual-shape", "nn.BNAddReLU(4).to(dev)(x4, r4[:, :, :4])", r"'residual'.*shape", fake=False),
    C("BNAddReLU-residual-dtype", "nn.BNAddReLU(4).to(dev).eval()(x4, r4.double())", r"'residual'.*dtype", fake=False),
    C("BNAddReLU-x-int", "nn.BNAddReLU(4).to(dev).eval()(x4.int(), r4.int())", r"'x'.*float32", fake=False),
    C("BNAddReLU-one-value-per-channel", "nn.BNAddReLU(4).to(dev)(x4[:1, :, :1, :1], r4[:1, :, :1, :1])", r"more than 1 value per channel", fake=False),
    C("BNAddReLU-residual-meta", "nn.BNAddReLU(4).to(dev).eval()(x4, r4.to('meta'))", r"'residual'.*device", isolate=True, fake=False),
    C("BNReLU-x-3d", "nn.BNReLU(4).to(dev)(x4[0])", r"'x'.*4-D", fake=False),
    C("BNReLU-x-channels", "nn.BNReLU(5).to(dev)(x4)", r"'x'.*channels", fake=False),
    C("BNReLU-x-int", "nn.BNReLU(4).to(dev).eval()(x4.long())", r"'x'.*float32", fake=False),
    C("BranchConcatBNReLU-no-branches", "nn.BranchConcatBNReLU([])", r"'channels_per_branch'", fake=False),
    C("BranchConcatBNReLU-negative-channels", "nn.BranchConcatBNReLU([3, -1])", r"'channels_per_branch'", fake=False),
    C("BranchConcatBNReLU-input-count", "nn.BranchConcatBNReLU([3, 4]).to(dev)(xa)", r"expected 2 inputs", fake=False),
    C("BranchConcatBNReLU-input-channels", "nn.BranchConcatBNReLU([3, 4]).to(dev)(xa, xa)", r"'inputs\[1\]'", fake=False),
    C("BranchConcatBNReLU-input-spatial", "nn.BranchConcatBNReLU([3, 4]).to(dev).eval()(xa, xb[:, :, :4])", r"'inputs\[1\]'.*every dim but 1", fake=False),
    C("BranchConcatBNReLU-input-none", "nn.BranchConcatBNReLU([3, 4]).to(dev)(xa, None)", r"'inputs\[1\]'", fake=False),
    C("DepthwiseConv2d-multiplier-0", "nn.DepthwiseConv2d(4, 3, multiplier=0)", r"'multiplier'", fake=False),
    C("DepthwiseConv2d-padding-string", "nn.DepthwiseConv2d(4, 3, padding='same')", r"'padding'", fake=False),
    C("DepthwiseConv2d-activation", "nn.DepthwiseConv2d(4, 3, activation='swish2')", r"'activation'", fake=False),
    C("DepthwiseConv2d-x-channels", "nn.DepthwiseConv2d(4, 3).to(dev)(xa)", r"x\.size\(1\) = 3", fake=False),
    C("DepthwiseConv2d-x-3d", "nn.DepthwiseConv2d(4, 3).to(dev)(xd[0])", r"'x'.*4-D", fake=False),
    C("DepthwiseConv2d-from-non-depthwise", "nn.DepthwiseConv2d.from_conv(tnn.Conv2d(4, 8, 3))", r"'conv'", fake=False),
    C("SeparableConv2d-activation", "nn.SeparableConv2d(4, 6, activation='swish2')", r"'activation'", fake=False),
    C("SeparableConv2d-depthwise-activation", "nn.SeparableConv2d(4, 6, depthwise_activation='swish')", r"'depthwise_activation'", fake=False),
    C("SeparableConv2d-multiplier-0", "nn.SeparableConv2d(4, 6, multiplier=0)", r"'multiplier'", fake=False),
    C("SeparableConv2d-padding-string", "nn.SeparableConv2d(4, 6, padding='same').eval()(xd)", r"'padding'", fake=False),
    C("SeparableConv2d-x-channels", "nn.SeparableConv2d(4, 6).to(dev).eval()(xa)", r"x\.size\(1\) = 3", fake=False),
    C("conv_bn_act-activation", "nn.conv_bn_act(xd, tnn.Conv2d(4, 4, 3).to(dev), None, activation='swish2')", r"'activation'", fake=False),
    C("conv_bn_act-conv-type", "nn.conv_bn_act(xd, tnn.Linear(4, 4))", r"'conv'", fake=False),
    C("conv_bn_act-bn-features", "nn.conv_bn_act(xd, tnn.Conv2d(4, 4, 3).to(dev), tnn.BatchNorm2d(5).to(dev))", r"'bn'", fake=False),
    C("conv_bn_act-bn-type", "nn.conv_bn_act(xd, tnn.Conv2d(4, 4, 3).to(dev), tnn.ReLU())", r"'bn'", fake=False),
]


def _case_params(filter_fn=lambda c: True):
    params = []
    for device in DEVICES:
        for case in CASES:
            if not filter_fn(case):
                continue
            # A CPU-device case that needs a second device kind or GPU uses CUDA tensors: a CUDA test too.
            marks = [pytest.mark.cuda] if case.needs in ("alt", "cuda2") else []
            if case.needs == "alt" and not (device.startswith("cuda") or torch.cuda.is_available()):
                marks.append(pytest.mark.skip(reason="needs a second device kind (CUDA)"))
            if case.needs == "cuda2" and not (device.startswith("cuda") and torch.cuda.device_count() > 1):
                marks.append(pytest.mark.skip(reason="needs a second CUDA device"))
            if case.xfail:
                marks.append(pytest.mark.xfail(strict=True, reason=case.xfail))
            params.append(pytest.param(device, case, marks=marks, id=f"{device}-{case.id}"))
    return params


def _check_message(case: Case, message: str) -> None:
    assert re.search(case.match, message, re.S), f"message does not match {case.match!r}: {message}"
    if case.forbid:
        assert not re.search(case.forbid, message, re.S), f"message matches {case.forbid!r}: {message}"


# --------------------------------------------------------------------------------------------------------
# A worker process that runs cases one at a time; when a case kills it (segfault, abort), that case fails
# with the signal and stderr, and the next case starts a fresh worker.

_WORKER = r"""
import json, os, sys
sys.path[:0] = [{paths!r}]
import torch
from test_bad_input import make_namespace
reply = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)  # whatever a case prints goes to stderr, not into the replies
for line in sys.stdin:
    request = json.loads(line)
    try:
        exec(request["code"], make_namespace(request["device"]))
    except BaseException as e:
        result = dict(raised=[c.__name__ for c in type(e).__mro__], message=str(e))
    else:
        result = dict(raised=None)
    reply.write(json.dumps(result) + "\n")
    reply.flush()
"""


class IsolatedRunner:
    def __init__(self):
        self.proc = None
        self.stderr = None

    def _start(self):
        import tempfile

        tests_dir = os.path.dirname(os.path.abspath(__file__))
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(pyfastblocks.__file__)))
        code = _WORKER.replace("{paths!r}", f"{tests_dir!r}, {package_root!r}")
        self.stderr = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.stderr, text=True, cwd=tests_dir)

    def run(self, code: str, device: str, timeout: float = 120.0) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps(dict(code=code, device=device)) + "\n")
        self.proc.stdin.flush()
        sel = selectors.DefaultSelector()
        sel.register(self.proc.stdout, selectors.EVENT_READ)
        ready = sel.select(timeout)
        sel.close()
        line = self.proc.stdout.readline() if ready else ""
        if line:
            return json.loads(line)
        if not ready:
            self.proc.kill()
        rc = self.proc.wait()
        self.stderr.seek(0)
        tail = self.stderr.read()[-3000:]
        self.proc = None
        pytest.fail(f"the worker process died running {code!r} (exit code {rc}"
                    f"{', signal ' + str(-rc) if rc < 0 else ''}); stderr:\n{tail}")

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def isolated():
    runner = IsolatedRunner()
    yield runner
    runner.close()


@pytest.mark.parametrize("device,case", _case_params())
def test_bad_input(device, case, isolated):
    if case.isolate:
        result = isolated.run(case.code, device)
        assert result["raised"] is not None, f"no error from {case.code}"
        assert any(e.__name__ in result["raised"] for e in case.exc), f"raised {result['raised'][0]}: {result['message']}"
        _check_message(case, result["message"])
        return
    ns = make_namespace(device)
    with pytest.raises(case.exc) as info:
        exec(case.code, ns)
    _check_message(case, str(info.value))


def test_table_size():
    # the issue asks for at least 40 cases over the public ops and modules
    assert len(CASES) >= 40
    assert len({c.id for c in CASES}) == len(CASES), "case ids must be unique"


# --------------------------------------------------------------------------------------------------------
# The same op cases under FakeTensorMode: what torch.compile / torch.export run at trace time.

CASES_BY_ID = {c.id: c for c in CASES}
# Known bugs of the fake impls (case id -> reason): strict xfails under FakeTensorMode only. None today.
_FAKE_XFAIL = {}


def _fake_params():
    params = []
    for p in _case_params(lambda c: c.fake and c.id.split("-")[0] not in ("BNAddReLU", "BNReLU")):
        device, case = p.values
        marks = [m for m in p.marks if m.name != "xfail"]
        if case.id in _FAKE_XFAIL:
            marks.append(pytest.mark.xfail(strict=True, reason=_FAKE_XFAIL[case.id]))
        params.append(pytest.param(device, case, marks=marks, id=p.id))
    return params


@pytest.mark.parametrize("device,case", _fake_params())
def test_bad_input_under_fake_tensors(device, case):
    """Under FakeTensorMode a bad call may pass (the kernel checks at run time), but any error must name the
    argument, as the kernel's does."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode(allow_non_fake_inputs=True):
        ns = make_namespace(device)
        try:
            exec(case.code, ns)
        except ALL as e:
            message = str(e)
            # the fake impls word their errors differently: only the argument's name is required
            argument = case.match.split(".*")[0]
            assert re.search(argument, message), f"message does not name {argument!r}: {message}"


# --------------------------------------------------------------------------------------------------------
# Tensors that require grad where they cannot: the ops have no double backward (the autograd kernels of their
# backward ops raise, see the end of pyfastblocks/ops.py). Backpropagating through a backward must raise, or else
# be right; it must never silently give zeros.

def _double_backward_cases(device):
    g = torch.Generator().manual_seed(3)

    def t(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device).requires_grad_()

    x, r, s, b = t(2, 3, 4, 4), t(2, 3, 4, 4), t(3), t(3)
    xa, xb = t(2, 2, 4, 4), t(2, 1, 4, 4)
    w, pw = t(3, 1, 3, 3), t(5, 3, 1, 1)
    # (name, fused fn, eager fn, inputs): the second derivative of sum(f^2) w.r.t. the inputs
    return {
        "add_relu": (lambda x, r, s, b: ops.add_relu(x, r, s, b, relu=False),
                     lambda x, r, s, b: x * s.view(1, -1, 1, 1) + b.view(1, -1, 1, 1) + r, (x, r, s, b)),
        "branch_concat": (lambda xa, xb, s, b: ops.branch_concat([xa, xb], s, b, relu=False),
                          lambda xa, xb, s, b: torch.cat([xa, xb], 1) * s.view(1, -1, 1, 1) + b.view(1, -1, 1, 1),
                          (xa, xb, s, b)),
        "affine_relu": (lambda x, s, b: ops.affine_relu(x, s, b, relu=False),
                        lambda x, s, b: x * s.view(1, -1, 1, 1) + b.view(1, -1, 1, 1), (x, s, b)),
        "depthwise_conv2d": (lambda x, w: ops.depthwise_conv2d(x, w, padding=1),
                             lambda x, w: torch.nn.functional.conv2d(x, w, padding=1, groups=3), (x, w)),
        "separable_conv2d": (lambda x, w, pw: ops.separable_conv2d(x, w, None, pw, padding=1),
                             lambda x, w, pw: torch.nn.functional.conv2d(
                                 torch.nn.functional.conv2d(x, w, padding=1, groups=3), pw), (x, w, pw)),
    }


@pytest.mark.parametrize("op", ["add_relu", "branch_concat", "affine_relu", "depthwise_conv2d", "separable_conv2d"])
@pytest.mark.parametrize("device", DEVICES)
def test_double_backward_raises_or_is_correct(device, op):
    fused, eager, inputs = _double_backward_cases(device)[op]

    def second(fn):
        y = fn(*inputs)
        grads = torch.autograd.grad((y * y).sum(), inputs, create_graph=True)
        total = sum((g * g).sum() for g in grads)
        return torch.autograd.grad(total, inputs, allow_unused=True)

    expected = second(eager)
    import warnings

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            got = second(fused)
    except RuntimeError as e:
        assert "fastblocks" in str(e) and "backward" in str(e), f"unclear error: {e}"
        return
    for a, b_ in zip(got, expected):
        torch.testing.assert_close(a if a is not None else torch.zeros_like(b_), b_)


def test_isolated_worker_turns_a_crash_into_a_failure(isolated):
    # the harness itself: a segfault in a case fails that case (with the signal) and does not end the run
    with pytest.raises(pytest.fail.Exception, match="died.*signal 11"):
        isolated.run("import ctypes; ctypes.string_at(0)", "cpu")
    assert isolated.run("raise ValueError('still alive')", "cpu")["message"] == "still alive"
