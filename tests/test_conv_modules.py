"""pyfastblocks.nn conv modules and conv_bn_act against the eager nn.Conv2d -> nn.BatchNorm2d -> activation, and the
separable_conv2d op against F.conv2d."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.library import opcheck

from pyfastblocks import nn as fnn
from pyfastblocks import ops

from conftest import DEVICES, make_layout

ACTS = {"none": lambda t: t, "relu": F.relu, "relu6": F.relu6}


def _randomize_bn(bn, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.3)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        bn.weight.copy_(torch.randn(bn.num_features, generator=g))
        bn.bias.copy_(torch.randn(bn.num_features, generator=g))


def _close(got, ref, tol):
    scale = max(ref.abs().max().item(), 1.0)
    torch.testing.assert_close(got.double(), ref.double(), rtol=0, atol=tol * scale)


CONVS = [
    dict(cin=8, cout=8, k=3, stride=1, padding=1, groups=8),      # depthwise 3x3
    dict(cin=8, cout=16, k=3, stride=2, padding=1, groups=8),     # depthwise, multiplier 2, stride 2
    dict(cin=6, cout=6, k=5, stride=1, padding=2, groups=6),      # depthwise 5x5
    dict(cin=8, cout=12, k=1, stride=1, padding=0, groups=1),     # pointwise
    dict(cin=4, cout=8, k=3, stride=2, padding=1, groups=1),      # dense 3x3
]


@pytest.mark.parametrize("input_relu", [False, True])
@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("cfg", CONVS, ids=lambda c: "c{cin}-{cout}k{k}s{stride}g{groups}".format(**c))
def test_conv_bn_act_matches_eager(device, cfg, layout, activation, input_relu):
    torch.manual_seed(0)
    conv = nn.Conv2d(cfg["cin"], cfg["cout"], cfg["k"], cfg["stride"], cfg["padding"], groups=cfg["groups"],
                     bias=False).to(device)
    bn = nn.BatchNorm2d(cfg["cout"]).to(device)
    _randomize_bn(bn, 1)
    x = make_layout(torch.randn(2, cfg["cin"], 9, 11, device=device), layout)

    def eager(conv, bn, x):
        return ACTS[activation](bn(conv(F.relu(x) if input_relu else x)))

    # eval: BN folded (no grad: the oneDNN / depthwise fused paths)
    conv.eval(), bn.eval()
    with torch.no_grad():
        got = fnn.conv_bn_act(x, conv, bn, activation, input_relu)
        _close(got, eager(conv, bn, x), 1e-5)
        if layout == "channels_last":
            assert got.is_contiguous(memory_format=torch.channels_last)
        # the folded weights are cached: a second call gives the same result, a weight change is seen
        torch.testing.assert_close(fnn.conv_bn_act(x, conv, bn, activation, input_relu), got)
        conv.weight.mul_(2)
        _close(fnn.conv_bn_act(x, conv, bn, activation, input_relu), eager(conv, bn, x), 1e-5)

    # training: batch statistics, running stats, gradients
    conv.train(), bn.train()
    conv_r, bn_r = copy.deepcopy(conv), copy.deepcopy(bn)
    xa = x.detach().clone().requires_grad_()
    xb = x.detach().clone().requires_grad_()
    ya = fnn.conv_bn_act(xa, conv, bn, activation, input_relu)
    yb = eager(conv_r, bn_r, xb)
    _close(ya, yb, 1e-5)
    g = torch.randn_like(yb)
    ya.backward(g)
    yb.backward(g)
    _close(xa.grad, xb.grad, 1e-4)
    for p, q in zip(list(conv.parameters()) + list(bn.parameters()), list(conv_r.parameters()) + list(bn_r.parameters())):
        _close(p.grad, q.grad, 1e-4)
    _close(bn.running_mean, bn_r.running_mean, 1e-6)
    _close(bn.running_var, bn_r.running_var, 1e-6)
    assert bn.num_batches_tracked == bn_r.num_batches_tracked


def test_conv_bn_act_without_bn_and_bad_activation(device):
    conv = nn.Conv2d(4, 4, 3, padding=1, groups=4).to(device)
    x = torch.randn(2, 4, 6, 6, device=device)
    with torch.no_grad():
        _close(fnn.conv_bn_act(x, conv, None, "relu6"), F.relu6(conv(x)), 1e-6)
    with pytest.raises(ValueError, match="argument 'activation'"):
        fnn.conv_bn_act(x, conv, None, "swish2")
    with pytest.raises(ValueError, match="argument 'bn'"):
        fnn.conv_bn_act(x, conv, nn.BatchNorm2d(5), "relu")
    with pytest.raises(TypeError, match="argument 'conv'"):
        fnn.conv_bn_act(x, nn.Linear(4, 4), None)


def test_depthwise_module_loads_conv2d_state_dict(device):
    ref = nn.Conv2d(8, 16, 3, stride=2, padding=1, groups=8).to(device)
    m = fnn.DepthwiseConv2d(8, 3, stride=2, padding=1, multiplier=2, activation="relu6").to(device)
    assert m.state_dict().keys() == ref.state_dict().keys()
    m.load_state_dict(ref.state_dict())
    x = torch.randn(2, 8, 10, 10, device=device)
    _close(m(x), F.relu6(ref(x)), 1e-5)
    shared = fnn.DepthwiseConv2d.from_conv(ref, activation="relu", input_relu=True)
    assert shared.weight is ref.weight
    _close(shared(x), F.relu(ref(F.relu(x))), 1e-5)
    with pytest.raises(ValueError, match="argument 'conv'"):
        fnn.DepthwiseConv2d.from_conv(nn.Conv2d(8, 8, 3))
    with pytest.raises(ValueError, match="argument 'activation'"):
        fnn.DepthwiseConv2d(8, 3, activation="tanh")


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("input_relu", [False, True])
def test_separable_module_train_and_eval(device, layout, input_relu):
    torch.manual_seed(0)
    m = fnn.SeparableConv2d(8, 12, 3, stride=1, padding=1, depthwise_activation="relu", activation="relu6",
                            input_relu=input_relu).to(device)
    for bn in (m.bn_depthwise, m.bn_pointwise):
        _randomize_bn(bn, 3)
    ref = copy.deepcopy(m)

    def eager(mod, x):
        x = F.relu(x) if input_relu else x
        y = F.relu(mod.bn_depthwise(mod.depthwise(x)))
        return F.relu6(mod.bn_pointwise(mod.pointwise(y)))

    x = make_layout(torch.randn(2, 8, 9, 9, device=device), layout)
    m.eval(), ref.eval()
    with torch.no_grad():
        got = m(x)
        _close(got, eager(ref, x), 1e-5)
        if layout == "channels_last":
            assert got.is_contiguous(memory_format=torch.channels_last)
    m.train(), ref.train()
    xa, xb = x.detach().clone().requires_grad_(), x.detach().clone().requires_grad_()
    ya, yb = m(xa), eager(ref, xb)
    _close(ya, yb, 1e-5)
    ya.sum().backward()
    yb.sum().backward()
    _close(xa.grad, xb.grad, 1e-4)
    for (name, p), q in zip(m.named_parameters(), ref.parameters()):
        _close(p.grad, q.grad, 1e-4)
    _close(m.bn_pointwise.running_var, ref.bn_pointwise.running_var, 1e-6)


@pytest.mark.parametrize("activation", ["none", "relu", "relu6"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_separable_conv2d_op_float64(device, layout, activation):
    g = torch.Generator().manual_seed(0)
    x = make_layout(torch.randn(2, 6, 9, 8, generator=g, dtype=torch.float64).to(device), layout)
    dw = torch.randn(12, 1, 3, 3, generator=g, dtype=torch.float64).to(device)
    db = torch.randn(12, generator=g, dtype=torch.float64).to(device)
    pw = torch.randn(10, 12, 1, 1, generator=g, dtype=torch.float64).to(device)
    pb = torch.randn(10, generator=g, dtype=torch.float64).to(device)
    y = ops.separable_conv2d(x, dw, db, pw, pb, 2, 1, 1, "relu6", activation, True)
    ref = F.conv2d(F.relu6(F.conv2d(F.relu(x), dw, db, 2, 1, 1, 6)), pw, pb)
    torch.testing.assert_close(y, ACTS[activation](ref))
    if layout == "channels_last":
        assert y.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_separable_conv2d_gradcheck_and_opcheck(device, layout):
    g = torch.Generator().manual_seed(0)
    x = make_layout(torch.randn(2, 4, 6, 5, generator=g, dtype=torch.float64).to(device), layout)
    dw = torch.randn(8, 1, 3, 3, generator=g, dtype=torch.float64).to(device)
    pw = torch.randn(6, 8, 1, 1, generator=g, dtype=torch.float64).to(device)
    pb = torch.randn(6, generator=g, dtype=torch.float64).to(device)
    args = (x.requires_grad_(), dw.requires_grad_(), None, pw.requires_grad_(), pb.requires_grad_(), [1, 1], [1, 1],
            [1, 1], "relu", "relu", False)
    assert torch.autograd.gradcheck(lambda *a: torch.ops.fastblocks.separable_conv2d.default(*a), args)
    opcheck(torch.ops.fastblocks.separable_conv2d.default, args)


def test_separable_conv2d_bad_input():
    x = torch.randn(2, 4, 6, 6)
    dw = torch.randn(4, 1, 3, 3)
    with pytest.raises(RuntimeError, match="argument 'pointwise_weight'"):
        ops.separable_conv2d(x, dw, None, torch.randn(8, 4, 3, 3))
    with pytest.raises(RuntimeError, match="argument 'pointwise_weight'"):
        ops.separable_conv2d(x, dw, None, torch.randn(8, 5, 1, 1))
    with pytest.raises(RuntimeError, match="argument 'pointwise_bias'"):
        ops.separable_conv2d(x, dw, None, torch.randn(8, 4, 1, 1), torch.randn(7))
    with pytest.raises(ValueError, match="argument 'activation'"):
        ops.separable_conv2d(x, dw, None, torch.randn(8, 4, 1, 1), None, activation="swish2")
    with pytest.raises(RuntimeError, match="argument 'pointwise_weight'"):
        ops.separable_conv2d(x, dw, None, torch.randn(8, 4, 1, 1, dtype=torch.float64))
