"""swap() on the zoo's block types (issue 16): DenseNet, EfficientNet / MBConv, MobileNetV3, RegNet, GoogLeNet and
timm Inception modules, Res2Net, timm's EfficientNet blocks. Per block: eval (NCHW and channels_last) and one
float32 training step on both training paths equal to the original (``test_swap.check_block``), the report's entry,
and the pass counter (``pyfastblocks.bench.sweep.PassCounter``) showing the BatchNorm passes gone in eval."""
import copy

import pytest
import torch
from torch import nn

import pyfastblocks
from pyfastblocks.bench.sweep import count_passes
from test_swap import assert_close_scaled, assert_training_matches, check_block, randn, randomize

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")


def check_container(model: nn.Module, x: torch.Tensor, swapped: dict, train: bool = True) -> nn.Module:
    """``check_block`` for a container whose children are the swapped blocks (``swapped``: class path -> count in
    the report)."""
    randomize(model)
    fused, report = pyfastblocks.swap(model, report=True)
    for path, n in swapped.items():
        assert report.swapped[path] == n, str(report)
    assert fused.state_dict().keys() == model.state_dict().keys()
    model.eval()
    fused.eval()
    with torch.no_grad():
        for xx in (x, x.contiguous(memory_format=torch.channels_last)):
            assert_close_scaled(fused(xx.clone()), model(xx.clone()))
    if train:
        assert_training_matches(model, fused, x)
    return fused


def no_bn_pass(fused: nn.Module, x: torch.Tensor, kinds=("bn",)) -> None:
    counts, _ = count_passes(fused.eval(), x)
    for k in kinds:
        assert counts.get(k, 0) == 0, dict(counts)


# ----------------------------------------------------------------------------------------------------------------
# DenseNet


def test_torchvision_dense_block_and_transition():
    from torchvision.models.densenet import _DenseBlock, _Transition

    model = nn.Sequential(_DenseBlock(3, 16, 2, 8, 0.0), _Transition(40, 16))
    x = randn(2, 16, 8, 8)
    fused = check_container(model, x, {"torchvision.models.densenet._DenseLayer": 3,
                                       "torchvision.models.densenet._Transition": 1})
    counts, _ = count_passes(fused, x)
    # every BN, ReLU and the layers' concats fused; the block's final concat stays
    assert counts["bn"] == 0 and counts["act"] == 0 and counts["cat"] == 1, dict(counts)


def test_torchvision_dense_block_longer_than_one_branch_concat():
    from torchvision.models.densenet import _DenseBlock

    from pyfastblocks.models.densenet import MAX_CONCAT_INPUTS

    # the last two layers concatenate more inputs than one branch_concat takes (64: more than densenet201's 48)
    layers = MAX_CONCAT_INPUTS + 2
    x = randn(2, 8, 4, 4)
    fused = check_container(_DenseBlock(layers, 8, 1, 2, 0.0), x, {"torchvision.models.densenet._DenseLayer": layers},
                            train=False)
    counts, _ = count_passes(fused, x)
    assert counts["bn"] == 0 and counts["cat"] == 1 + 2, dict(counts)  # the block's own + the heads of the last two


def test_torchvision_dense_layer_dropout_and_memory_efficient():
    from torchvision.models.densenet import _DenseBlock

    # dropout in training draws the same numbers; memory_efficient runs the original (checkpointing) with grads
    check_container(_DenseBlock(2, 16, 2, 8, 0.2), randn(2, 16, 8, 8),
                    {"torchvision.models.densenet._DenseLayer": 2})
    check_container(_DenseBlock(2, 16, 2, 8, 0.0, memory_efficient=True), randn(2, 16, 8, 8),
                    {"torchvision.models.densenet._DenseLayer": 2})


def test_timm_dense_block_and_transition():
    from timm.layers import BatchNormAct2d
    from timm.models.densenet import DenseBlock, DenseTransition

    model = nn.Sequential(DenseBlock(2, 16, 2, 8, norm_layer=BatchNormAct2d), DenseTransition(32, 16))
    x = randn(2, 16, 8, 8)
    fused = check_container(model, x, {"timm.models.densenet.DenseLayer": 2,
                                       "timm.models.densenet.DenseTransition": 1})
    no_bn_pass(fused, x, ("bn", "act"))


# ----------------------------------------------------------------------------------------------------------------
# EfficientNet / MobileNetV3 / RegNet (torchvision)


@pytest.mark.parametrize("kind,expand,stride,sd", [("MBConv", 4, 1, 0.0), ("MBConv", 4, 1, 0.5), ("MBConv", 1, 2, 0.0),
                                                    ("FusedMBConv", 4, 1, 0.0), ("FusedMBConv", 4, 2, 0.0)])
def test_torchvision_mbconv(kind, expand, stride, sd):
    from torchvision.models import efficientnet as E

    cnf_cls = E.MBConvConfig if kind == "MBConv" else E.FusedMBConvConfig
    cnf = cnf_cls(expand, 3, stride, 16, 16, 1)
    block = getattr(E, kind)(cnf, sd, nn.BatchNorm2d)
    x = randn(4, 16, 8, 8)
    fused = check_block(block, x)
    no_bn_pass(fused, x, ("bn", "add") if stride == 1 else ("bn",))


def test_torchvision_mobilenetv3_inverted_residual():
    from torchvision.models.mobilenetv3 import InvertedResidual, InvertedResidualConfig

    for act, se in (("HS", True), ("RE", False)):
        cnf = InvertedResidualConfig(16, 3, 64, 16, se, act, 1, 1, 1.0)
        x = randn(2, 16, 8, 8)
        fused = check_block(InvertedResidual(cnf, nn.BatchNorm2d), x)
        no_bn_pass(fused, x, ("bn", "add"))


@pytest.mark.parametrize("width_out,stride,se", [(16, 1, 0.25), (32, 2, None)])
def test_torchvision_regnet_res_bottleneck(width_out, stride, se):
    from torchvision.models.regnet import ResBottleneckBlock

    block = ResBottleneckBlock(16, width_out, stride, nn.BatchNorm2d, nn.ReLU, 8, 1.0, se)
    x = randn(2, 16, 8, 8)
    fused = check_block(block, x)
    no_bn_pass(fused, x, ("bn", "add"))


@pytest.mark.parametrize("in_ch,out_ch,stride", [(16, 16, 1), (16, 24, 2)])
def test_torchvision_mnasnet_inverted_residual(in_ch, out_ch, stride):
    from torchvision.models.mnasnet import _InvertedResidual

    x = randn(2, in_ch, 8, 8)
    fused = check_block(_InvertedResidual(in_ch, out_ch, 3, stride, 3), x)
    no_bn_pass(fused, x, ("bn", "act", "add"))


def test_torchvision_regnet_model_report():
    model = torchvision.models.regnet_y_400mf(num_classes=10)
    _, report = pyfastblocks.swap(model, report=True)
    assert report.swapped["torchvision.models.regnet.ResBottleneckBlock"] == 16, str(report)


def test_googlenet_inception():
    from torchvision.models.googlenet import Inception

    x = randn(2, 16, 7, 7)
    fused = check_block(Inception(16, 8, 4, 8, 4, 8, 8), x)
    no_bn_pass(fused, x, ("bn", "act", "cat"))


# ----------------------------------------------------------------------------------------------------------------
# timm


@pytest.mark.parametrize("act", [nn.SiLU, nn.ReLU6, nn.Hardswish])
def test_timm_inverted_residual_and_edge_residual(act):
    from timm.models._efficientnet_blocks import EdgeResidual, InvertedResidual, SqueezeExcite

    x = randn(4, 16, 8, 8)
    for block in (InvertedResidual(16, 16, exp_ratio=4, act_layer=act, se_layer=SqueezeExcite),
                  InvertedResidual(16, 24, stride=2, exp_ratio=4, act_layer=act),
                  InvertedResidual(16, 16, exp_ratio=4, act_layer=act, drop_path_rate=0.5),
                  EdgeResidual(16, 16, exp_ratio=4, act_layer=act)):
        fused = check_block(block, x)
        no_bn_pass(fused, x, ("bn", "act", "add") if block.has_skip else ("bn", "act"))


def test_timm_regnet_bottleneck():
    from timm.models.regnet import Bottleneck

    for args in ((16, 16, 1), (16, 32, 2)):
        x = randn(2, 16, 8, 8)
        fused = check_container(nn.Sequential(Bottleneck(*args, group_size=8)), x,
                                {"timm.models.regnet.Bottleneck": 1})
        no_bn_pass(fused, x, ("bn", "add"))


def test_timm_bottle2neck():
    from timm.models.res2net import Bottle2neck

    x = randn(2, 32, 8, 8)
    fused = check_block(Bottle2neck(32, 8, base_width=16, norm_layer=nn.BatchNorm2d), x)
    no_bn_pass(fused, x, ("bn",))
    down = nn.Sequential(nn.Conv2d(32, 64, 1, 2, bias=False), nn.BatchNorm2d(64))
    check_block(Bottle2neck(32, 16, stride=2, downsample=down, base_width=16, norm_layer=nn.BatchNorm2d), x)


def test_timm_dla_basic_and_root():
    from timm.models.dla import DlaBasic, DlaRoot

    x = randn(2, 16, 8, 8)
    check_block(DlaBasic(16, 16), x)

    class Root(nn.Module):  # DlaRoot takes the list of its children's outputs
        def __init__(self, shortcut):
            super().__init__()
            self.root = DlaRoot(32, 16, 1, shortcut)

        def forward(self, x):
            return self.root([x, x * 0.5])

    for shortcut in (True, False):
        fused = check_container(Root(shortcut), x, {"timm.models.dla.DlaRoot": 1})
        no_bn_pass(fused, x, ("bn", "act", "add"))


@pytest.mark.parametrize("model_name,kind", [
    ("inception_v4", "Mixed3a"), ("inception_v4", "Mixed4a"), ("inception_v4", "Mixed5a"),
    ("inception_v4", "InceptionA"), ("inception_v4", "ReductionA"), ("inception_v4", "InceptionB"),
    ("inception_v4", "ReductionB"), ("inception_v4", "InceptionC"),
    ("inception_resnet_v2", "Mixed_5b"), ("inception_resnet_v2", "Block35"), ("inception_resnet_v2", "Mixed_6a"),
    ("inception_resnet_v2", "Block17"), ("inception_resnet_v2", "Mixed_7a"), ("inception_resnet_v2", "Block8"),
    ("inception_v3", "InceptionA"), ("inception_v3", "InceptionB"), ("inception_v3", "InceptionE")])
def test_timm_inception_modules(model_name, kind):
    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10)
    index = next(i for i, m in enumerate(model.modules()) if type(m).__name__ == kind)
    block = list(model.modules())[index]
    seen = []
    handle = block.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        model.eval()(randn(1, 3, 75, 75))
    handle.remove()
    block = copy.deepcopy(block)
    x = seen[0].clone()
    train = sum(p.numel() for p in block.parameters()) < 2_000_000
    fused = check_block(block, x, train=train)
    no_bn_pass(fused, x, ("bn",))


@pytest.mark.parametrize("act", ["relu", "silu"])
def test_timm_separable_conv_norm_act(act):
    from timm.layers.separable_conv import SeparableConvNormAct

    x = randn(2, 16, 8, 8)
    fused = check_block(SeparableConvNormAct(16, 24, 3, act_layer=act), x)
    no_bn_pass(fused, x, ("bn", "act"))


def test_timm_batchnorm_act_on_its_own():
    from timm.layers import BatchNormAct2d

    class PreAct(nn.Module):  # a pre-activation block (DPN's BnActConv2d, ResNetV2): BN + act, then a conv
        def __init__(self):
            super().__init__()
            self.bn = BatchNormAct2d(16, act_layer=nn.SiLU)
            self.conv = nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x):
            return self.conv(self.bn(x))

    x = randn(2, 16, 8, 8)
    fused = check_container(PreAct(), x, {"timm.layers.norm_act.BatchNormAct2d": 1})
    no_bn_pass(fused, x, ("bn", "act"))
    _, report = pyfastblocks.swap(BatchNormAct2d(16, apply_act=False), report=True)
    assert report.total_swapped == 0 and not report.left  # a BN alone is one pass either way


def test_unknown_family_still_fuses_its_sequentials():
    class Unknown(nn.Module):  # a custom forward: never assumed to be a chain
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
            self.bn = nn.BatchNorm2d(8)

        def forward(self, x):
            return self.bn(self.body(x)) * 2

    model = randomize(Unknown())
    fused, report = pyfastblocks.swap(model, report=True)
    assert report.swapped["torch.nn.modules.container.Sequential"] == 1
    assert "not a recognized block" in str(report)
    x = randn(2, 8, 8, 8)
    with torch.no_grad():
        assert_close_scaled(fused.eval()(x), model.eval()(x))
    counts, _ = count_passes(fused, x)
    assert counts["bn"] == 1  # Unknown.bn itself


def test_sequential_subclass_pickles(tmp_path):
    import pickle

    from torchvision.models.densenet import _Transition

    t = randomize(_Transition(8, 4)).eval()
    fused = pyfastblocks.swap(t)
    assert type(fused).__name__.startswith("Fused_Sequential_of_")
    again = pickle.loads(pickle.dumps(fused))
    x = randn(2, 8, 8, 8)
    with torch.no_grad():
        assert_close_scaled(again(x), t(x))


# ----------------------------------------------------------------------------------------------------------------
# the live rule: a swapped block of these families steps aside when a child it runs itself changes


def _live_case(block, x, change):
    randomize(block).eval()
    fused, report = pyfastblocks.swap(block, report=True)
    fused.eval()
    change(fused)
    change(block)
    with torch.no_grad():
        assert_close_scaled(fused(x), block(x))
    assert report.stepped_aside, str(report)


def test_live_rule_dense_layer_mbconv_regnet_bottle2neck():
    from timm.models.res2net import Bottle2neck
    from torchvision.models import efficientnet as E
    from torchvision.models.densenet import _DenseLayer
    from torchvision.models.regnet import ResBottleneckBlock

    def hook_norm1(m):
        m.norm1.register_forward_hook(lambda mod, i, o: o * 0.5)

    _live_case(_DenseLayer(16, 8, 2, 0.0), randn(2, 16, 8, 8), hook_norm1)

    def new_last_bn(m):
        torch.manual_seed(3)
        m.block[-1][1] = randomize(nn.BatchNorm2d(16), seed=5).eval()  # same class: a live read, no step aside
        m.block[-1].register_forward_pre_hook(lambda mod, i: (i[0] * 2,))

    _live_case(E.MBConv(E.MBConvConfig(4, 3, 1, 16, 16, 1), 0.0, nn.BatchNorm2d), randn(2, 16, 8, 8), new_last_bn)

    def silu(m):
        m.activation = nn.SiLU()

    _live_case(ResBottleneckBlock(16, 16, 1, nn.BatchNorm2d, nn.ReLU, 8, 1.0, 0.25), randn(2, 16, 8, 8), silu)

    def hook_bns(m):
        m.bns[1].register_forward_hook(lambda mod, i, o: o + 1)

    _live_case(Bottle2neck(32, 8, base_width=16, norm_layer=nn.BatchNorm2d), randn(2, 32, 8, 8), hook_bns)
