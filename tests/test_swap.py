"""pyfastblocks.swap(): block by block (eval and one float32 training step, NCHW and channels_last), what it leaves
alone and why, the report, inplace, hooks, Sequential plans, pickling.

Single blocks on 8x8-16x16 inputs are well conditioned (128+ values per channel in each BatchNorm), so the training
step is compared in float32, with both training backends (fused batch statistics and ATen's batch_norm), at the
issue's tolerances: loss rtol 1e-5, gradients (parameters and input) rtol 1e-4
with atol 1e-4 * max|gradient| of the block, running statistics 1e-5. Eval: rtol 1e-5, atol 1e-5 * max|output|
(the BatchNorm folded into the convolution rounds differently).
"""
import copy
import pickle
import subprocess
import sys
import textwrap

import pytest
import torch

from conftest import child_process_env_and_cwd, randomize_batchnorm as randomize, training_backend
from torch import nn

import pyfastblocks
import pyfastblocks.models as M
from pyfastblocks.swap import RULES, SwapReport

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

from torchvision.models import inception as tv_inception  # noqa: E402
from torchvision.models import mobilenetv2 as tv_mobilenetv2  # noqa: E402
from torchvision.models import resnet as tv_resnet  # noqa: E402



def swapped_copy(block: nn.Module) -> nn.Module:
    fused, report = pyfastblocks.swap(block, report=True)
    assert report.total_swapped >= 1, str(report)
    assert getattr(type(fused), "_fastblocks_fused", False), str(report)
    return fused


def assert_close_scaled(actual, expected, rtol=1e-5, rel_atol=1e-5):
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rel_atol * expected.abs().max().item())


def step(block, x, seed=0):
    block.train()
    block.zero_grad(set_to_none=True)
    x = x.detach().clone().requires_grad_()
    torch.manual_seed(seed)
    out = block(x)
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(7))
    loss = (out * weight).sum()
    loss.backward()
    grads = {k: p.grad for k, p in block.named_parameters() if p.grad is not None}
    grads["<input>"] = x.grad
    return loss.detach(), grads, {k: b.clone() for k, b in block.named_buffers()}



def assert_training_matches(model: nn.Module, fused: nn.Module, x: torch.Tensor) -> None:
    """One float32 training step of ``fused`` (on both training paths: fused batch statistics, or ATen's batch_norm)
    gives the loss, gradients and BatchNorm buffers of the same step of ``model``."""
    e_loss, e_grads, e_bufs = step(copy.deepcopy(model), x)
    for backend in ("fastblocks", "eager"):
        with training_backend(backend):
            loss, grads, bufs = step(copy.deepcopy(fused), x)
        torch.testing.assert_close(loss, e_loss, rtol=1e-5, atol=1e-5 * e_loss.abs().item())
        scale = max(g.abs().max().item() for g in e_grads.values())
        assert grads.keys() == e_grads.keys()
        for k in e_grads:
            torch.testing.assert_close(grads[k], e_grads[k], rtol=1e-4, atol=1e-4 * scale,
                                       msg=lambda m: f"{backend} {k}: {m}")
        for k in e_bufs:
            torch.testing.assert_close(bufs[k], e_bufs[k], rtol=1e-5, atol=1e-5, msg=lambda m: f"{backend} {k}: {m}")


def check_block(block: nn.Module, x: torch.Tensor, train: bool = True) -> nn.Module:
    """The swapped block equals the eager one: eval (NCHW, channels_last: values and output memory format) and, with
    ``train``, one float32 training step."""
    randomize(block)
    fused = swapped_copy(block)
    assert fused.state_dict().keys() == block.state_dict().keys()
    for k, v in block.state_dict().items():
        assert torch.equal(fused.state_dict()[k], v)
    block.eval()
    fused.eval()
    with torch.no_grad():
        for xx in (x, x.contiguous(memory_format=torch.channels_last)):
            expected = block(xx.clone())
            out = fused(xx.clone())
            assert_close_scaled(out, expected)
            cl = torch.channels_last
            assert out.is_contiguous(memory_format=cl) == expected.is_contiguous(memory_format=cl)
    if train:
        assert_training_matches(block, fused, x)
    return fused


def randn(*shape, seed=1):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------------------------
# torchvision blocks


def test_torchvision_basic_block():
    check_block(tv_resnet.BasicBlock(16, 16), randn(2, 16, 8, 8))


def test_torchvision_bottleneck_with_downsample():
    down = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
    check_block(tv_resnet.Bottleneck(16, 8, stride=2, downsample=down), randn(2, 16, 16, 16))


@pytest.mark.parametrize("inp,oup,stride,expand", [(16, 16, 1, 6), (16, 24, 2, 6), (16, 8, 1, 1)])
@pytest.mark.parametrize("backend", ["library", "fastblocks", "auto"])
def test_torchvision_inverted_residual(inp, oup, stride, expand, backend, monkeypatch):
    monkeypatch.setitem(M.DEPTHWISE_BACKEND, "cpu", backend)
    check_block(tv_mobilenetv2.InvertedResidual(inp, oup, stride, expand), randn(2, inp, 8, 8))


@pytest.mark.parametrize("kind,args,channels", [
    ("InceptionA", (32, 8), 32), ("InceptionB", (32,), 32), ("InceptionC", (32, 16), 32), ("InceptionD", (32,), 32),
    ("InceptionE", (32,), 32),
])
def test_torchvision_inception_modules(kind, args, channels):
    # standalone: the max-pool branches of B and D must not take the concat's ReLU, the input here being signed
    block = getattr(tv_inception, kind)(*args)
    check_block(block, randn(2, channels, 9, 9))


def test_inception_pool_branch_keeps_its_sign_inside_inception3():
    """Issue 14, failing input 5: Mixed_6a of a swapped inception_v3 called directly on a signed input: its max-pool
    branch is not ReLU'd (the original's minimum is negative)."""
    model = randomize(torchvision.models.inception_v3(num_classes=10, aux_logits=False, init_weights=True)).eval()
    fused = pyfastblocks.swap(model)
    x = torch.randn(1, 288, 7, 7, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want, got = model.Mixed_6a(x), fused.Mixed_6a(x)
    assert want.min() < 0
    assert_close_scaled(got, want)


def test_torchvision_basic_conv2d_and_aux():
    check_block(tv_inception.BasicConv2d(8, 16, kernel_size=3, padding=1), randn(2, 8, 8, 8))
    aux = tv_inception.InceptionAux(32, 10)
    randomize(aux)
    fused = pyfastblocks.swap(aux)  # the aux head itself is a container: its BasicConv2d are swapped
    assert type(fused.conv0).__name__ == "Fused_torchvision_BasicConv2d"
    x = randn(2, 32, 17, 17)
    with torch.no_grad():
        assert_close_scaled(fused.eval()(x), aux.eval()(x))


def test_conv2d_norm_activation_and_sequential():
    from torchvision.ops.misc import Conv2dNormActivation

    check_block(Conv2dNormActivation(8, 16, 3, activation_layer=nn.ReLU6), randn(2, 8, 8, 8))
    relu = nn.ReLU(inplace=True)  # one ReLU module used twice
    seq = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), relu, nn.MaxPool2d(2),
                        nn.Conv2d(16, 16, 3, padding=1), relu, nn.BatchNorm2d(16), nn.ReLU6())
    check_block(seq, randn(2, 8, 8, 8))


def test_eval_tails_without_onednn(monkeypatch):
    """The eval residual tails off CPU (CUDA, or a CPU without oneDNN): the bare convolution, then the folded
    BatchNorm + add (+ ReLU) as one fastblocks::add_relu, instead of oneDNN's convolution with add post-op."""
    import pyfastblocks.models._fused as fused_module
    from timm.models.xception import Block

    monkeypatch.setattr(fused_module, "_onednn_ok", lambda *tensors: False)
    down = nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False), nn.BatchNorm2d(32))
    check_block(tv_resnet.Bottleneck(16, 8, stride=2, downsample=down), randn(2, 16, 16, 16), train=False)
    check_block(tv_mobilenetv2.InvertedResidual(16, 16, 1, 6), randn(2, 16, 8, 8), train=False)
    check_block(Block(16, 24, 2, 2), randn(2, 16, 9, 9), train=False)


# ----------------------------------------------------------------------------------------------------------------
# timm blocks


def test_timm_basic_block_and_bottleneck():
    from timm.models.resnet import BasicBlock, Bottleneck

    check_block(BasicBlock(16, 16), randn(2, 16, 8, 8))
    down = nn.Sequential(nn.Conv2d(16, 32, 1, 1, bias=False), nn.BatchNorm2d(32))
    check_block(Bottleneck(16, 8, downsample=down), randn(2, 16, 8, 8))


def test_timm_bottleneck_with_se_and_drop_path():
    """SE and DropPath sit between bn3 and the add: the add + ReLU is fused without the BatchNorm, the rest runs as
    modules in timm's order (DropPath draws the same random numbers)."""
    from timm.layers import DropPath, get_attn
    from timm.models.resnet import Bottleneck

    block = Bottleneck(32, 8, attn_layer=get_attn("se"), drop_path=DropPath(0.5))
    check_block(block, randn(4, 32, 8, 8))


def test_timm_depthwise_separable_with_skip():
    from timm.models._efficientnet_blocks import DepthwiseSeparableConv

    check_block(DepthwiseSeparableConv(16, 16, pw_act=False), randn(2, 16, 8, 8))  # has_skip: conv + BN + add
    check_block(DepthwiseSeparableConv(16, 24, stride=2, pw_act=True, act_layer=nn.ReLU6), randn(2, 16, 8, 8))


@pytest.mark.parametrize("start_with_relu,grow_first,strides", [(True, True, 1), (False, True, 2), (True, False, 2)])
def test_timm_legacy_xception_block(start_with_relu, grow_first, strides):
    from timm.models.xception import Block

    out = 16 if strides == 1 else 24
    check_block(Block(16, out, 2 if strides == 2 else 3, strides, start_with_relu, grow_first), randn(2, 16, 9, 9))


@pytest.mark.parametrize("start_with_relu,no_skip,out,stride", [(True, False, 24, 2), (True, False, 16, 1),
                                                               (False, True, 24, 1)])
def test_timm_aligned_xception_module(start_with_relu, no_skip, out, stride):
    from timm.models.xception_aligned import XceptionModule

    block = XceptionModule(16, out, stride=stride, start_with_relu=start_with_relu, no_skip=no_skip,
                           norm_layer=nn.BatchNorm2d)
    check_block(block, randn(2, 16, 9, 9))


def test_timm_preact_xception_left_alone():
    from timm.models.xception_aligned import PreXceptionModule

    block = PreXceptionModule(16, 24, stride=2, norm_layer=nn.BatchNorm2d)
    fused, report = pyfastblocks.swap(block, report=True)
    assert type(fused) is PreXceptionModule
    assert "pre-activation" in str(report)


# ----------------------------------------------------------------------------------------------------------------
# what swap() leaves alone, and why


def _bottleneck(**kw):
    return randomize(tv_resnet.Bottleneck(16, 4, **kw))


def _left(block):
    fused, report = pyfastblocks.swap(block, report=True)
    assert type(fused) is type(block), str(report)
    return fused, report


def test_left_alone_extra_child():
    block = _bottleneck()
    block.se = nn.Identity()
    _, report = _left(block)
    assert "unexpected children ['se']" in str(report)


def test_left_alone_other_activation():
    block = _bottleneck()
    block.relu = nn.SiLU()
    _, report = _left(block)
    assert "relu is SiLU" in str(report)


def test_left_alone_frozen_batchnorm():
    from torchvision.ops import FrozenBatchNorm2d

    block = tv_resnet.Bottleneck(16, 4, norm_layer=FrozenBatchNorm2d)
    _, report = _left(block)
    assert "FrozenBatchNorm2d" in str(report)


def test_left_alone_subclass_with_own_forward():
    class MyBottleneck(tv_resnet.Bottleneck):
        def forward(self, x):
            return super().forward(x) * 2

    _, report = _left(MyBottleneck(16, 4))
    assert "not a recognized block" in str(report)


def test_left_alone_hooks_and_instance_forward():
    block = _bottleneck().eval()
    calls = []
    block.bn2.register_forward_hook(lambda m, i, o: calls.append(o.shape))
    fused, report = _left(block)
    assert "hooks on submodule 'bn2'" in str(report)
    fused(randn(2, 16, 8, 8))
    assert len(calls) == 1  # the copy kept its hook and still runs it

    other = _bottleneck()
    other.forward = lambda x: x
    _, report = _left(other)
    assert "forward is set on the instance" in str(report)


def test_sequential_hooked_child_runs_as_module():
    seq = randomize(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())).eval()
    calls = []
    seq[4].register_forward_hook(lambda m, i, o: calls.append(1))
    fused = pyfastblocks.swap(seq)  # the first conv + BN + ReLU fuses, the hooked BN runs as itself
    x = randn(2, 8, 8, 8)
    with torch.no_grad():
        assert_close_scaled(fused(x), seq(x))
    assert len(calls) == 2


def test_sequential_plan_follows_changes():
    seq = randomize(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())).eval()
    fused = pyfastblocks.swap(seq).eval()
    x = randn(2, 8, 8, 8)
    with torch.no_grad():
        fused(x)
        extra = randomize(nn.BatchNorm2d(8), seed=3).eval()
        fused.append(extra)
        fused.append(nn.ReLU6())
        seq.append(extra)
        seq.append(nn.ReLU6())
        assert_close_scaled(fused(x), seq(x))
        assert_close_scaled(fused[:2](x), seq[:2](x))  # a slice of a fused Sequential


# ----------------------------------------------------------------------------------------------------------------
# API: report, inplace, idempotence, pickling


def test_report_counts_and_text():
    model = torchvision.models.resnet50(num_classes=10)
    fused, report = pyfastblocks.swap(model, report=True)
    assert isinstance(report, SwapReport)
    assert report.swapped["torchvision.models.resnet.Bottleneck"] == 16
    assert report.swapped["torchvision.models.resnet.ResNet"] == 1
    assert report.swapped["torch.nn.modules.container.Sequential"] == 4  # the downsample conv + BN pairs
    text = str(report)
    assert "Bottleneck (torchvision) x16" in text and "21 blocks swapped" in text
    assert not report.left
    # swapping again finds only fused blocks
    again, report2 = pyfastblocks.swap(fused, report=True)
    assert report2.total_swapped == 0 and report2.already["torchvision.models.resnet.Bottleneck"] == 16
    # a pyfastblocks model is fused already
    _, report3 = pyfastblocks.swap(M.resnet18(num_classes=10), report=True)
    assert report3.total_swapped == 0 and not report3.left


def test_inplace():
    model = randomize(torchvision.models.resnet18(num_classes=10)).eval()
    params = {k: p for k, p in model.named_parameters()}
    x = randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    copied = pyfastblocks.swap(model)
    assert copied is not model and type(model.layer1[0]) is tv_resnet.BasicBlock
    same = pyfastblocks.swap(model, inplace=True)
    assert same is model
    assert isinstance(model.layer1[0], tv_resnet.BasicBlock) and type(model.layer1[0]) is not tv_resnet.BasicBlock
    assert all(p is params[k] for k, p in model.named_parameters())  # the same parameters, not copies
    with torch.no_grad():
        assert_close_scaled(model(x), expected)


def test_rules_cover_issue_blocks():
    for path in ["torchvision.models.resnet.BasicBlock", "torchvision.models.resnet.Bottleneck",
                 "torchvision.models.inception.InceptionA", "torchvision.models.inception.InceptionE",
                 "torchvision.models.inception.BasicConv2d", "torchvision.models.mobilenetv2.InvertedResidual",
                 "torchvision.ops.misc.Conv2dNormActivation", "timm.models.resnet.Bottleneck",
                 "timm.models.xception.Block", "timm.models.xception_aligned.XceptionModule",
                 "timm.models._efficientnet_blocks.DepthwiseSeparableConv"]:
        assert path in RULES, path


def test_pickle_in_a_fresh_process(tmp_path):
    model = randomize(torchvision.models.resnet18(num_classes=10)).eval()
    fused = pyfastblocks.swap(model)
    x = randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = fused(x)
    path = tmp_path / "fused.pt"
    torch.save({"model": fused, "x": x, "expected": expected}, path)
    assert type(pickle.loads(pickle.dumps(fused)).layer1[0]) is type(fused.layer1[0])
    script = textwrap.dedent(f"""
        import torch
        d = torch.load({str(path)!r}, weights_only=False)
        m = d["model"]
        assert type(m.layer1[0]).__module__ == "pyfastblocks.swap", type(m.layer1[0])
        with torch.no_grad():
            torch.testing.assert_close(m(d["x"]), d["expected"])
        print("ok")
    """)
    env, cwd = child_process_env_and_cwd()
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env,
                            cwd=cwd)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr


def test_swap_rejects_non_modules():
    with pytest.raises(TypeError):
        pyfastblocks.swap(lambda x: x)


@pytest.mark.parametrize("train", [False, True])
def test_dynamo_traces_swapped_blocks_without_graph_breaks(train):
    """torch.compile of a swapped model: every fused forward traces into one graph (plans are not cached while
    tracing, the ops have fake impls)."""
    import torch._dynamo

    blocks = [tv_resnet.Bottleneck(16, 4), tv_mobilenetv2.InvertedResidual(16, 16, 1, 6), tv_inception.InceptionB(16),
              nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())]
    model = pyfastblocks.swap(nn.Sequential(*[nn.Sequential(b) for b in blocks[:2]]))
    for block in [model] + [pyfastblocks.swap(b) for b in blocks[2:]]:
        block.train(train)
        torch._dynamo.reset()
        with torch.set_grad_enabled(train):
            explanation = torch._dynamo.explain(block)(randn(2, 16, 9, 9))
        assert explanation.graph_break_count == 0, explanation.break_reasons
