"""pyfastblocks.nn.BNAddReLU against nn.BatchNorm2d + add + ReLU: outputs, gradients, running statistics."""
import copy

import pytest
import torch
from conftest import make_layout
from torch import nn

from pyfastblocks.nn import BNAddReLU


class Reference(nn.Module):
    def __init__(self, bn, relu=True):
        super().__init__()
        self.bn, self.relu = bn, relu

    def forward(self, x, r):
        y = self.bn(x) + r
        return torch.relu(y) if self.relu else y


def _pair(channels, relu=True, momentum=0.1, affine=True, device="cpu", dtype=torch.float64):
    bn = nn.BatchNorm2d(channels, momentum=momentum, affine=affine).to(device, dtype)
    with torch.no_grad():
        if affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_()
        bn.running_mean.normal_()
        bn.running_var.uniform_(0.5, 2.0)
    fused = BNAddReLU(channels, momentum=momentum, affine=affine, relu=relu).to(device, dtype)
    fused.load_state_dict(bn.state_dict())
    return Reference(bn, relu), fused


def test_state_dict_keys_are_batchnorms():
    assert list(BNAddReLU(8).state_dict().keys()) == list(nn.BatchNorm2d(8).state_dict().keys())


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("relu", [True, False])
@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("affine", [True, False])
def test_training_matches_batchnorm(device, layout, relu, momentum, affine):
    ref, fused = _pair(6, relu, momentum, affine, device)
    ref.train(), fused.train()
    for step in range(3):
        g = torch.Generator().manual_seed(step)
        x = make_layout(torch.randn(4, 6, 5, 7, generator=g, dtype=torch.float64).to(device), layout)
        r = make_layout(torch.randn(4, 6, 5, 7, generator=g, dtype=torch.float64).to(device), layout)
        grad = torch.randn(4, 6, 5, 7, generator=g, dtype=torch.float64).to(device)
        xs = [x.clone().requires_grad_(), x.clone().requires_grad_()]
        rs = [r.clone().requires_grad_(), r.clone().requires_grad_()]
        out_ref, out = ref(xs[0], rs[0]), fused(xs[1], rs[1])
        torch.testing.assert_close(out, out_ref)
        out_ref.backward(grad)
        out.backward(grad)
        torch.testing.assert_close(xs[1].grad, xs[0].grad)
        torch.testing.assert_close(rs[1].grad, rs[0].grad)
        if affine:
            torch.testing.assert_close(fused.weight.grad, ref.bn.weight.grad)
            torch.testing.assert_close(fused.bias.grad, ref.bn.bias.grad)
    for name, buf in ref.bn.named_buffers():
        torch.testing.assert_close(getattr(fused, name), buf, msg=name)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eval_matches_batchnorm(device, layout, dtype):
    ref, fused = _pair(16, device=device, dtype=dtype)
    ref.eval(), fused.eval()
    x = make_layout(torch.randn(3, 16, 9, 9, dtype=dtype, device=device), layout)
    r = make_layout(torch.randn(3, 16, 9, 9, dtype=dtype, device=device), layout)
    with torch.no_grad():
        torch.testing.assert_close(fused(x, r), ref(x, r), rtol=1e-5, atol=1e-5)
        # The folded parameters are cached, and the cache notices a parameter update.
        fused.weight.mul_(2.0)
        ref.bn.weight.mul_(2.0)
        torch.testing.assert_close(fused(x, r), ref(x, r), rtol=1e-5, atol=1e-5)
    running = copy.deepcopy(fused.running_mean)
    fused(x, r)
    assert torch.equal(running, fused.running_mean), "eval must not touch running stats"


def test_eval_gradients_reach_parameters(device):
    ref, fused = _pair(4, device=device)
    ref.eval(), fused.eval()
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64, device=device)
    r = torch.randn_like(x)
    ref(x, r).sum().backward()
    fused(x, r).sum().backward()
    torch.testing.assert_close(fused.weight.grad, ref.bn.weight.grad)
    torch.testing.assert_close(fused.bias.grad, ref.bn.bias.grad)


def test_half_input_in_eval(device):
    ref, fused = _pair(8, device=device, dtype=torch.float32)
    ref.eval(), fused.eval()
    x = torch.randn(2, 8, 4, 4, device=device)
    r = torch.randn_like(x)
    with torch.no_grad():
        out = fused(x.half(), r.half())
    assert out.dtype == torch.float16
    torch.testing.assert_close(out.float(), ref(x.half().float(), r.half().float()), rtol=2e-3, atol=2e-3)


def test_bad_input():
    m = BNAddReLU(4)
    with pytest.raises(ValueError, match="'x'.*4-D"):
        m(torch.randn(2, 4, 3), torch.randn(2, 4, 3))
    with pytest.raises(ValueError, match="'x'.*channels"):
        m(torch.randn(2, 5, 3, 3), torch.randn(2, 5, 3, 3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        m.train()(torch.randn(1, 4, 1, 1), torch.randn(1, 4, 1, 1))
