"""swap() with every activation of the table: torchvision Conv2dNormActivation and timm ConvNormAct /
BatchNormAct2d blocks ending in SiLU, Hardswish, GELU (both forms), LeakyReLU (any slope) or ReLU6, in place or not,
get the fused epilogue (no separate BatchNorm or activation pass in eval) and give the original's results in eval
and training."""
import copy
import functools

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

import pyfastblocks

torchvision = pytest.importorskip("torchvision")

ACTIVATION_LAYERS = {
    "silu": (nn.SiLU, True),
    "silu-not-inplace": (nn.SiLU, False),
    "hardswish": (nn.Hardswish, True),
    "gelu": (nn.GELU, None),
    "gelu_tanh": (functools.partial(nn.GELU, approximate="tanh"), None),
    "leaky_relu-0.1": (functools.partial(nn.LeakyReLU, 0.1), True),
    "leaky_relu-default": (nn.LeakyReLU, False),
    "relu6": (nn.ReLU6, True),
}
# ATen ops that mean a separate BatchNorm or activation pass
SEPARATE = ("batch_norm", "silu", "hardswish", "gelu", "leaky_relu", "hardtanh", "relu")


class OpNames(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.__name__)
        return func(*args, **(kwargs or {}))


def _randomize_batchnorms(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.2)
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model


def _separate_passes(model, x):
    with torch.no_grad(), OpNames() as ops:
        model(x)
    return [n for n in ops.names if any(k in n for k in SEPARATE)]


def _check(block, x):
    block = _randomize_batchnorms(block)
    fused, report = pyfastblocks.swap(block, report=True)
    assert report.total_swapped >= 1, str(report)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), block.eval()(x), rtol=1e-5, atol=1e-5)
    assert _separate_passes(fused.eval(), x) == []
    # training: loss, gradients and running statistics as the original's
    ref, got = copy.deepcopy(block).train(), copy.deepcopy(fused).train()
    for model in (ref, got):
        model(x).square().mean().backward()
    for (name, p), (_, q) in zip(ref.named_parameters(), got.named_parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)
    for (name, b), (_, c) in zip(ref.named_buffers(), got.named_buffers()):
        torch.testing.assert_close(c, b, msg=name)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act", list(ACTIVATION_LAYERS))
def test_torchvision_conv2d_norm_activation(act, layout):
    layer, inplace = ACTIVATION_LAYERS[act]
    block = torchvision.ops.Conv2dNormActivation(8, 16, 3, activation_layer=layer, inplace=inplace)
    x = torch.randn(2, 8, 9, 9)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    _check(block, x)


@pytest.mark.parametrize("act", ["silu", "hard_swish", "gelu", "gelu_tanh", "leaky_relu", "relu6"])
def test_timm_conv_norm_act(act):
    timm = pytest.importorskip("timm")
    block = timm.layers.ConvNormAct(8, 16, 3, act_layer=act)
    _check(block, torch.randn(2, 8, 9, 9))


@pytest.mark.parametrize("act", ["silu", "hard_swish", "leaky_relu"])
def test_timm_batchnorm_act_in_a_sequential(act):
    timm = pytest.importorskip("timm")
    block = nn.Sequential(nn.Conv2d(8, 16, 3, bias=False), timm.layers.BatchNormAct2d(16, act_layer=act))
    _check(block, torch.randn(2, 8, 9, 9))


def test_an_activation_outside_the_table_stays_a_module():
    """Mish is not in the table: the conv + BatchNorm still fuse, Mish runs as its own module, results equal."""
    block = _randomize_batchnorms(torchvision.ops.Conv2dNormActivation(8, 16, 3, activation_layer=nn.Mish))
    fused = pyfastblocks.swap(block)
    x = torch.randn(2, 8, 9, 9)
    with torch.no_grad():
        torch.testing.assert_close(fused.eval()(x), block.eval()(x), rtol=1e-5, atol=1e-5)
        names = _separate_passes(fused.eval(), x)
    assert not any("batch_norm" in n for n in names), names
