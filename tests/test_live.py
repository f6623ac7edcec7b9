"""Issue 14: swap() follows the live model. Each swapped block reads its parameters and buffers at every call, runs its
original forward when it changed after swap() (hooks, parametrizations, pruning, replaced children), keeps the
original block's semantics and dtypes on any input, traces with torch.fx, and trains as accurately as eager.

One test per failing input of the issue (``test_input<N>_...``, each asserting the unswapped model's value), then
one per kind with another model or another way in, then the training accuracy of issue 13. The right value is
always the unswapped model's, given the same change.
"""
import copy
import logging
import statistics

import pytest
import torch
from torch import nn

import pyfastblocks
import pyfastblocks.models as M
from conftest import randomize_batchnorm as randomize, training_backend
from pyfastblocks import nn as fnn

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

from torchvision.models import resnet as tv_resnet  # noqa: E402
from torchvision.models.mobilenetv2 import InvertedResidual  # noqa: E402
from torchvision.ops.misc import Conv2dNormActivation  # noqa: E402


def randn(*shape, seed=1, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def close(got, want, rtol=1e-5):
    torch.testing.assert_close(got, want, rtol=rtol, atol=rtol * max(want.abs().max().item(), 1e-6))


def swapped(model, **kw):
    fused, report = pyfastblocks.swap(model, report=True, **kw)
    assert report.total_swapped >= 1, str(report)
    return fused, report


def both(model, fn):
    """fn applied to the original and to a swapped copy (taken before fn: the change happens after swap()), with the
    same random numbers."""
    fused, report = swapped(model)
    for m in (model, fused):
        torch.manual_seed(3)
        fn(m)
    return model, fused, report


# ================================================================================================================
# The failing inputs


def test_input1_hook_registered_after_swap_is_called():
    block = randomize(tv_resnet.BasicBlock(4, 4)).eval()
    fused, report = swapped(block)
    calls = []
    fused.bn1.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    x = randn(1, 4, 5, 5)
    with torch.no_grad():
        close(fused(x), block(x))
    assert calls == [torch.Size([1, 4, 5, 5])]
    assert "hooks on bn1" in str(report)

    cna = randomize(Conv2dNormActivation(4, 4)).eval()
    fused_cna = pyfastblocks.swap(cna)
    with torch.no_grad():
        fused_cna(x)  # a first forward, then a hook on its activation
        calls.clear()
        fused_cna[2].register_forward_hook(lambda m, i, o: calls.append(1))
        close(fused_cna(x), cna(x))
    assert calls == [1]


def test_input2_weights_overwritten_in_place_through_data():
    seq = randomize(nn.Sequential(nn.Conv2d(2, 2, 1, bias=False), nn.BatchNorm2d(2), nn.ReLU())).eval()
    fused = pyfastblocks.swap(seq)
    x = randn(1, 2, 3, 3)
    with torch.no_grad():
        fused(x)
    g = torch.Generator().manual_seed(5)
    for t in list(fused.parameters()) + [b for b in fused.buffers() if b.is_floating_point()]:
        t.data.copy_(torch.rand(t.shape, generator=g) * 2 + 0.5)  # no version bump, same storage
    seq.load_state_dict(fused.state_dict())
    with torch.no_grad():
        close(fused(x), seq(x))


def test_input3_activation_children_replaced():
    block = randomize(tv_resnet.BasicBlock(4, 4)).double().eval()
    x = randn(1, 4, 5, 5, dtype=torch.float64)
    block, fused, report = both(block, lambda b: setattr(b, "relu", nn.SiLU()))
    with torch.no_grad():
        torch.testing.assert_close(fused(x), block(x))
    assert "relu is now SiLU, swap() recognized ReLU" in str(report)

    ir = randomize(InvertedResidual(4, 4, 1, 2)).eval()

    def hardswish(b):
        for m in b.modules():
            if isinstance(m, Conv2dNormActivation):
                m[2] = nn.Hardswish()

    ir, fused_ir, _ = both(ir, hardswish)
    x = randn(1, 4, 5, 5)
    with torch.no_grad():
        close(fused_ir(x), ir(x))


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_input4_fx_feature_extractor_and_symbolic_trace(train):
    from torchvision.models.feature_extraction import create_feature_extractor

    model = randomize(torchvision.models.resnet18(num_classes=4)).train(train)
    fused = pyfastblocks.swap(model)
    x = randn(2, 3, 32, 32)
    nodes = {"layer1": "f", "fc": "out"}
    want_fe, got_fe = create_feature_extractor(model, nodes), create_feature_extractor(fused, nodes)
    want, got = want_fe(x), got_fe(x)
    for k in want:
        close(got[k], want[k], 1e-4)
    traced = torch.fx.symbolic_trace(fused)
    targets = [str(n.target) for n in traced.graph.nodes if n.op == "call_function"]
    # the fusion stays in the graph: every BatchNorm tail is one bn_tail node, no BatchNorm module is called
    assert sum("bn_tail" in t for t in targets) == 20, targets
    assert not any(n.op == "call_module" and "bn" in str(n.target) for n in traced.graph.nodes)
    reference = copy.deepcopy(model)
    out, ref = traced(x), reference(x)
    close(out, ref, 1e-4)
    if train:  # running statistics (the traced graph updates its root's buffers) and gradients
        traced_buffers = dict(traced.named_buffers())
        for name, a in reference.named_buffers():
            close(traced_buffers[name].float(), a.float(), 1e-4)
        out.square().sum().backward()
        ref.square().sum().backward()
        for (name, a), b in zip(reference.named_parameters(), fused.parameters()):
            close(b.grad, a.grad, 1e-4)


def test_input5_inception_max_pool_branch_keeps_its_sign():
    model = randomize(torchvision.models.inception_v3(num_classes=10, aux_logits=False, init_weights=True)).eval()
    fused = pyfastblocks.swap(model)
    x = randn(1, 288, 7, 7)
    with torch.no_grad():
        want = model.Mixed_6a(x)
        got = fused.Mixed_6a(x)
    assert want.min() < 0
    close(got, want)


def test_input6_autocast_residual_add_promotes():
    block = randomize(InvertedResidual(4, 4, 1, 2)).eval()
    assert block.use_res_connect
    fused = pyfastblocks.swap(block)
    x = randn(1, 4, 5, 5)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        want, got = block(x), fused(x)
    assert want.dtype == got.dtype == torch.float32
    close(got, want, 2e-2)


@pytest.mark.parametrize("kind", ["BNReLU", "BNAddReLU", "BranchConcatBNReLU", "swapped BasicBlock"])
def test_input7_empty_batch_in_training(kind):
    x = torch.randn(0, 4, 3, 3)
    ref = nn.BatchNorm2d(4).train()
    want = torch.relu(ref(x))
    if kind == "swapped BasicBlock":
        block = tv_resnet.BasicBlock(4, 4).train()
        fused = pyfastblocks.swap(block)
        for backend in ("fastblocks", "eager"):
            with training_backend(backend):
                got = fused(x)
            assert got.shape == block(x).shape == x.shape
        return
    m = {"BNReLU": lambda: fnn.BNReLU(4), "BNAddReLU": lambda: fnn.BNAddReLU(4),
         "BranchConcatBNReLU": lambda: fnn.BranchConcatBNReLU([4])}[kind]().train()
    got = m(x, x) if kind == "BNAddReLU" else m(x)
    assert got.shape == want.shape
    assert m.num_batches_tracked.item() if kind != "BranchConcatBNReLU" else m.bns[0].num_batches_tracked.item()
    for name in ("running_mean", "running_var"):
        bn = m.bns[0] if kind == "BranchConcatBNReLU" else m
        torch.testing.assert_close(getattr(bn, name), getattr(ref, name))
    # and one value per channel in training raises as BatchNorm does
    one = torch.randn(1, 4, 1, 1)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        m(one, one) if kind == "BNAddReLU" else m(one)


# input 8 (depthwise gradients and the thread count): tests/test_determinism.py
# (test_routed_depthwise_gradients_and_the_thread_count)


# ================================================================================================================
# Hooks


def test_forward_pre_hook_with_kwargs_added_after_first_forward():
    from timm.models.resnet import Bottleneck

    block = randomize(Bottleneck(16, 4)).eval()
    fused = pyfastblocks.swap(block)
    x = randn(2, 16, 6, 6)
    with torch.no_grad():
        fused(x)

    def hook(module, args, kwargs):
        return (args[0] * 0.5,), kwargs

    for b in (block, fused):
        b.conv2.register_forward_pre_hook(hook, with_kwargs=True)
    with torch.no_grad():
        close(fused(x), block(x))


def test_full_backward_hook_in_training():
    # (on a conv: a full backward hook on bn2 makes torchvision's in-place ReLU after it raise, unswapped too)
    block = randomize(tv_resnet.Bottleneck(16, 4)).train()
    fused = pyfastblocks.swap(block)
    seen = {"orig": [], "fused": []}
    block.conv2.register_full_backward_hook(lambda m, gi, go: seen["orig"].append(go[0].shape))
    fused.conv2.register_full_backward_hook(lambda m, gi, go: seen["fused"].append(go[0].shape))
    x = randn(2, 16, 6, 6)
    want, got = block(x), fused(x)
    close(got, want)
    want.sum().backward()
    got.sum().backward()
    assert seen["fused"] == seen["orig"] == [torch.Size([2, 4, 6, 6])]
    for (name, a), b in zip(block.named_parameters(), fused.parameters()):
        close(b.grad, a.grad, 1e-4)


def test_global_module_hooks_see_every_module():
    model = randomize(torchvision.models.mobilenet_v2(num_classes=10)).eval()
    fused = pyfastblocks.swap(model)
    x = randn(1, 3, 32, 32)
    calls = []
    handle = nn.modules.module.register_module_forward_hook(
        lambda m, i, o: calls.append(getattr(type(m), "_fastblocks_base", type(m)).__name__))
    try:
        with torch.no_grad():
            want = model(x)
            n_orig = len(calls)
            got = fused(x)
    finally:
        handle.remove()
    close(got, want)
    assert calls[n_orig:] == calls[:n_orig]  # the same module calls, in the same order


def test_hooks_on_the_swapped_block_itself_run_around_the_fused_forward():
    block = randomize(tv_resnet.BasicBlock(8, 8)).eval()
    fused, report = swapped(block)
    x = randn(2, 8, 6, 6)
    for b in (block, fused):
        b.register_forward_hook(lambda m, i, o: o * 2)
        b.register_forward_pre_hook(lambda m, i: (i[0] + 1,))
    with torch.no_grad():
        close(fused(x), block(x))
    assert not report.stepped_aside  # the block's own hooks do not make it step aside


def test_logger_and_report_say_why_once_per_block_and_reason(caplog):
    model = randomize(torchvision.models.resnet18(num_classes=4)).eval()
    fused, report = swapped(model)
    fused.layer1[0].conv2.register_forward_hook(lambda m, i, o: None)
    x = randn(1, 3, 32, 32)
    with caplog.at_level(logging.DEBUG, logger="pyfastblocks"), torch.no_grad():
        fused(x)
        fused(x)
    records = [r for r in caplog.records if r.name == "pyfastblocks"]
    assert len(records) == 1 and "layer1.0" in records[0].getMessage() and "hooks on conv2" in records[0].getMessage()
    assert report.stepped_aside == {"layer1.0": {records[0].getMessage().split(": ", 1)[1]: 2}}
    assert "ran unfused since swap()" in str(report)


# ================================================================================================================
# Parametrizations and pruning


def test_weight_norm_and_spectral_norm_parametrizations():
    from torch.nn.utils import parametrizations

    block = randomize(tv_resnet.BasicBlock(8, 8)).eval()
    x = randn(2, 8, 6, 6)
    block, fused, report = both(block, lambda b: parametrizations.weight_norm(b.conv1))
    with torch.no_grad():
        close(fused(x), block(x))
    assert "parametrized" in str(report)

    ir = randomize(InvertedResidual(8, 8, 1, 2)).eval()
    ir, fused_ir, _ = both(ir, lambda b: parametrizations.spectral_norm(b.conv[2]))
    with torch.no_grad():
        close(fused_ir(x), ir(x))


def test_custom_parametrization_of_a_batchnorm_weight():
    from torch.nn.utils import parametrize

    class Double(nn.Module):
        def forward(self, w):
            return 2 * w

    block = randomize(tv_resnet.Bottleneck(16, 4)).eval()
    block, fused, _ = both(block, lambda b: parametrize.register_parametrization(b.bn3, "weight", Double()))
    x = randn(2, 16, 5, 5)
    with torch.no_grad():
        close(fused(x), block(x))


def test_old_style_weight_norm_in_a_sequential():
    seq = randomize(nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())).eval()
    with pytest.warns(FutureWarning):
        seq, fused, _ = both(seq, lambda s: torch.nn.utils.weight_norm(s[3]))  # a forward pre-hook
    x = randn(2, 4, 6, 6)
    with torch.no_grad():
        close(fused(x), seq(x))


def test_pruning_then_removing_it():
    from torch.nn.utils import prune

    block = randomize(tv_resnet.BasicBlock(8, 8)).eval()
    fused, report = swapped(block)
    x = randn(2, 8, 6, 6)
    for b in (block, fused):
        torch.manual_seed(0)
        prune.l1_unstructured(b.conv2, "weight", amount=0.5)
    with torch.no_grad():
        close(fused(x), block(x))
    assert any("hooks on conv2" in r for r in report.stepped_aside["<model>"])
    for b in (block, fused):
        prune.remove(b.conv2, "weight")  # the pruned weight is a plain parameter again: fused again
    calls = sum(report.stepped_aside["<model>"].values())
    with torch.no_grad():
        close(fused(x), block(x))
    assert sum(report.stepped_aside["<model>"].values()) == calls


def test_quantization_observers():
    from torch.ao.quantization import get_default_qconfig, prepare

    model = randomize(torchvision.models.resnet18(num_classes=4)).eval()
    fused = pyfastblocks.swap(model)
    x = randn(1, 3, 32, 32)
    prepared = []
    for m in (model, fused):
        m.qconfig = get_default_qconfig("x86")
        prepared.append(prepare(m, inplace=False))
    with torch.no_grad():
        close(prepared[1](x), prepared[0](x))
    for a, b in zip(prepared[0].modules(), prepared[1].modules()):
        if hasattr(a, "min_val"):  # the observers saw the same activations
            torch.testing.assert_close(b.min_val, a.min_val)


# ================================================================================================================
# Weight reloads, BatchNorm recalibration, replaced children, inference mode


def test_load_state_dict_after_an_inference_mode_forward():
    model = randomize(torchvision.models.mobilenet_v2(num_classes=10)).eval()
    fused = pyfastblocks.swap(model)
    x = randn(2, 3, 32, 32)
    with torch.inference_mode():
        fused(x)
    new = randomize(torchvision.models.mobilenet_v2(num_classes=10), seed=9).state_dict()
    model.load_state_dict(new)
    fused.load_state_dict(new)
    with torch.inference_mode():
        close(fused(x), model(x))


def test_buffer_replaced_and_parameter_scaled_in_place():
    model = randomize(torchvision.models.resnet18(num_classes=4)).eval()
    x = randn(2, 3, 32, 32)

    def change(m):
        m.layer2[0].bn1.running_var = torch.full((128,), 2.0)  # a new buffer object
        with torch.no_grad():
            m.layer3[1].bn2.weight.mul_(3)
            m.layer4[0].conv1.weight.add_(0.01)

    fused = pyfastblocks.swap(model)
    with torch.no_grad():
        fused(x)
    change(model)
    change(fused)
    with torch.no_grad():
        close(fused(x), model(x))


@pytest.mark.parametrize("backend", ["fastblocks", "eager"])
def test_batchnorm_recalibration_with_update_bn(backend, monkeypatch):
    monkeypatch.setitem(M.TRAINING_BACKEND, "cpu", backend)
    model = randomize(torchvision.models.resnet18(num_classes=4))
    fused = pyfastblocks.swap(model)
    loader = [randn(4, 3, 32, 32, seed=s) for s in range(3)]
    for m in (model, fused):
        torch.optim.swa_utils.update_bn(loader, m)  # momentum None (cumulative), reset running stats, train mode
    for (name, a), b in zip(model.named_buffers(), fused.buffers()):
        close(b.float(), a.float(), 1e-4)
    x = randn(2, 3, 32, 32)
    model.eval(), fused.eval()
    with torch.no_grad():
        close(fused(x), model(x), 1e-4)


def test_replaced_children():
    x = randn(2, 8, 6, 6)
    # another class: the block steps aside
    block = randomize(tv_resnet.BasicBlock(8, 8)).eval()
    block, fused, report = both(block, lambda b: setattr(b, "bn2", nn.GroupNorm(2, 8)))
    with torch.no_grad():
        close(fused(x), block(x))
    assert "bn2 is now GroupNorm" in str(report)
    # the same class with other values: still fused, reads the new child
    ir = randomize(InvertedResidual(8, 8, 1, 2)).eval()
    new_bn = randomize(nn.BatchNorm2d(8), seed=4).eval()
    ir, fused_ir, report = both(ir, lambda b: b.conv.__setitem__(3, copy.deepcopy(new_bn)))
    with torch.no_grad():
        close(fused_ir(x), ir(x))
    assert not report.stepped_aside
    # a container's children changed: steps aside
    ir2 = randomize(InvertedResidual(8, 8, 1, 2)).eval()
    ir2, fused_ir2, report = both(ir2, lambda b: b.conv.append(nn.ReLU()))
    with torch.no_grad():
        close(fused_ir2(x), ir2(x))
    assert "the children of conv changed" in str(report)


def test_instance_forward_set_on_a_child():
    block = randomize(tv_resnet.BasicBlock(8, 8)).eval()

    def patch(b):
        original = b.bn1.forward
        b.bn1.forward = lambda t: original(t) * 0.5

    block, fused, _ = both(block, patch)
    x = randn(2, 8, 6, 6)
    with torch.no_grad():
        close(fused(x), block(x))


def test_inference_mode_then_training_with_gradients():
    model = randomize(torchvision.models.resnet18(num_classes=4)).eval()
    fused = pyfastblocks.swap(model)
    x = randn(2, 3, 32, 32)
    with torch.inference_mode():
        close(fused(x), model(x))
    # after inference mode: eval with gradients (nothing kept from the inference-mode call), then training
    for mode in ("eval", "train"):
        model.train(mode == "train"), fused.train(mode == "train")
        model.zero_grad(), fused.zero_grad()
        want, got = model(x), fused(x)
        close(got, want, 1e-4)
        want.sum().backward()
        got.sum().backward()
        for (name, a), b in zip(model.named_parameters(), fused.parameters()):
            close(b.grad, a.grad, 1e-3)


# ================================================================================================================
# Autocast, FX on other models, empty batches in swapped blocks


def test_autocast_dtypes_of_other_residual_blocks():
    from timm.models.resnet import Bottleneck
    from timm.models.xception import Block

    for block, shape in ((Bottleneck(16, 4), (2, 16, 6, 6)), (Block(16, 16, 2, 1), (2, 16, 7, 7)),
                         (tv_resnet.BasicBlock(8, 8), (2, 8, 6, 6))):
        block = randomize(block).eval()
        fused = pyfastblocks.swap(block)
        x = randn(*shape)
        for inp in (x, x.bfloat16()):
            with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
                want, got = block(inp), fused(inp)
            assert got.dtype == want.dtype, type(block).__name__
            close(got.float(), want.float(), 3e-2)


@pytest.mark.parametrize("name,size", [("mobilenet_v2", 32), ("inception_v3", 75)])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_symbolic_trace_other_models(name, size, train):
    kw = {"aux_logits": False, "init_weights": True} if name == "inception_v3" else {}
    model = randomize(getattr(torchvision.models, name)(num_classes=10, **kw)).train(train)
    for m in model.modules():
        if isinstance(m, nn.Dropout):
            m.p = 0.0
    fused = pyfastblocks.swap(model)
    traced = torch.fx.symbolic_trace(fused)
    x = randn(2, 3, size, size)
    ref = copy.deepcopy(model)
    close(traced(x), ref(x), 1e-4)
    if train:
        traced_buffers = dict(traced.named_buffers())
        for name, a in ref.named_buffers():
            close(traced_buffers[name].float(), a.float(), 1e-4)


def test_empty_batch_in_swapped_inverted_residual_training():
    block = InvertedResidual(8, 8, 1, 6).train()
    fused = pyfastblocks.swap(block)
    x = torch.randn(0, 8, 5, 5)
    for backend in ("fastblocks", "eager"):
        with training_backend(backend):
            got = fused(x)
        assert got.shape == (0, 8, 5, 5)
    for (name, a), b in zip(block.named_buffers(), fused.buffers()):
        if name.endswith("running_mean") or name.endswith("running_var"):
            torch.testing.assert_close(a, b)


# ================================================================================================================
# Training accuracy (issue 13): float32 gradients through the batch statistics as accurate as eager's


def _rel_error(got, want):
    return ((got.double() - want).norm() / want.norm()).item()


@pytest.mark.parametrize("kind", ["BNReLU", "BNAddReLU", "BranchConcatBNReLU"])
def test_fused_batch_statistics_backward_as_accurate_as_eager(kind):
    """Few values per channel (2 x 2 x 2) with a large mean (300 std): differentiating through var_mean with an
    uncentered sum(g * x) lost 2-4x here; the fused backward is now ATen's, so its error equals eager's. No
    activation (relu=False): nothing else (a ReLU's sign) can differ between float32 and float64."""
    errors = {"fused": [], "eager": []}
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        c = 8
        x64 = (torch.randn(2, c, 2, 2, generator=g, dtype=torch.float64) * 0.1
               + 30 * torch.randn(1, c, 1, 1, generator=g, dtype=torch.float64)).float().double()
        g64 = torch.randn(2, c, 2, 2, generator=g, dtype=torch.float64).float().double()
        bn64 = nn.BatchNorm2d(c).double().train()
        with torch.no_grad():
            bn64.weight.uniform_(0.5, 1.5, generator=g)
            bn64.bias.normal_(0, 0.2, generator=g)
        module = {"BNReLU": lambda: fnn.BNReLU(c, relu=False), "BNAddReLU": lambda: fnn.BNAddReLU(c, relu=False),
                  "BranchConcatBNReLU": lambda: fnn.BranchConcatBNReLU([c], eps=1e-5, relu=False)}[kind]()
        module.load_state_dict({("bns.0." if kind == "BranchConcatBNReLU" else "") + k: v
                                for k, v in bn64.state_dict().items()})
        module.float().train()
        for name, m, x, grad in (("ref", bn64, x64, g64), ("eager", copy.deepcopy(bn64).float(), x64.float(),
                                                           g64.float()), ("fused", module, x64.float(), g64.float())):
            x = x.clone().requires_grad_()
            out = m(x, torch.zeros_like(x)) if name == "fused" and kind == "BNAddReLU" else m(x)
            out.backward(grad)
            params = list(m.parameters())
            grads = torch.cat([x.grad.flatten()] + [p.grad.flatten() for p in params]).double()
            if name == "ref":
                ref = grads
            else:
                errors[name].append(_rel_error(grads, ref))
    for fused, eager in zip(errors["fused"], errors["eager"]):
        assert fused <= 1.5 * eager + 1e-9, errors


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["fastblocks", "eager"])
def test_swapped_resnet26d_training_gradients_as_accurate_as_eager(backend, monkeypatch):
    """Issue 13's case: timm resnet26d (num_classes=10, BN weight ~ U(0.5, 1.5)), batch 2 at 64x64 (2 x 2 x 2 values
    per channel in the last stage), cross-entropy, one backward; float32 gradient error against a float64 run of
    the original, as one vector, median over draws within 3x of eager float32's.

    With the issue's BN bias ~ N(0, 0.2) single draws are decided by discontinuities: a ReLU input or a max-pool
    near-tie that float32 and float64 resolve differently gives 1e-3..2e-2 (eager float32 included, on other
    draws than the fused one: measured). The bias here is ~ N(4.5, 0.2), so no ReLU input is near zero and only
    rare max-pool near-ties remain; the medians then compare precision."""
    monkeypatch.setitem(M.TRAINING_BACKEND, "cpu", backend)
    torch.manual_seed(0)
    base = timm.create_model("resnet26d", num_classes=10)
    errors = {"fused": [], "eager": []}

    def grads(model, x, y):
        model.zero_grad(set_to_none=True)
        nn.functional.cross_entropy(model(x), y).backward()
        return torch.cat([p.grad.flatten().double() for p in model.parameters()])

    for seed in range(9 if backend == "fastblocks" else 5):
        g = torch.Generator().manual_seed(seed)
        model = copy.deepcopy(base)
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.bias.normal_(4.5, 0.2, generator=g)
        x = torch.randn(2, 3, 64, 64, generator=g)
        y = torch.randint(0, 10, (2,), generator=g)
        ref = grads(copy.deepcopy(model).double().train(), x.double(), y)
        errors["eager"].append(_rel_error(grads(copy.deepcopy(model).train(), x, y), ref))
        errors["fused"].append(_rel_error(grads(pyfastblocks.swap(model).train(), x, y), ref))
    assert statistics.median(errors["fused"]) <= 3 * statistics.median(errors["eager"]), errors
