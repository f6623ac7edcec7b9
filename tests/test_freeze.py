"""pyfastblocks.freeze: the inference snapshot against the original model (randomized BatchNorm statistics, NCHW and
channels_last inputs, torchvision and timm CNNs, swapped or not), its contract (inference only, snapshot, tied to a
device and dtype), what its graph holds, and torch.compile / torch.export / pickle of a frozen model."""
import copy
import io
import operator

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import pyfastblocks
from pyfastblocks import activations
from pyfastblocks.freeze import FrozenAffine, FrozenConv2d, FrozenLinear, FrozenModel

torchvision = pytest.importorskip("torchvision")
timm = pytest.importorskip("timm")

CL = torch.channels_last


def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BatchNorm statistics and affine parameters (a freshly built model has mean 0, var 1, weight 1, bias 0,
    which would hide a wrong fold)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.rand(c, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(c, generator=g) * 1.5 + 0.5)
                if m.weight is not None:
                    m.weight.copy_(torch.rand(c, generator=g) + 0.5)
                    m.bias.copy_(torch.rand(c, generator=g) - 0.5)
    return model


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


MODELS = {
    "resnet50": lambda: torchvision.models.resnet50(),
    "inception_v3": lambda: torchvision.models.inception_v3(aux_logits=False, init_weights=False),
    "mobilenet_v2": lambda: torchvision.models.mobilenet_v2(),
    "densenet121": lambda: torchvision.models.densenet121(),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(),
    "timm_legacy_xception": lambda: timm.create_model("legacy_xception"),
    "timm_mobilenetv1_100": lambda: timm.create_model("mobilenetv1_100"),
    "timm_efficientnet_b0": lambda: timm.create_model("efficientnet_b0"),
}
IMAGE = {"inception_v3": 80}  # its smallest input is 75 px


def build(name: str) -> nn.Module:
    torch.manual_seed(0)
    return randomize(MODELS[name]()).eval()


def image(name: str, batch: int = 2) -> torch.Tensor:
    size = IMAGE.get(name, 64)
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("memory_format", [CL, torch.contiguous_format], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("name", list(MODELS))
def test_model_matches_original(device, name, memory_format):
    """fp32, NCHW and channels_last inputs, within 1e-4 relative; the frozen model's layout is channels_last (the
    default: oneDNN everywhere on the CPU) or NCHW (CPU: depthwise convolutions under 128 channels on the fastblocks
    kernel). CUDA (where present): cuDNN convolutions and fastblocks epilogues, against the same reference."""
    model = build(name).to(device)
    x = image(name).to(device)
    frozen = pyfastblocks.freeze(model, x, memory_format=memory_format)
    assert isinstance(frozen, FrozenModel) and frozen.graph_modules()
    with torch.no_grad():
        ref = model(x)
        for inp in (x, x.contiguous(memory_format=CL)):
            out = frozen(inp)
            assert out.shape == ref.shape and out.dtype == ref.dtype
            assert rel_err(out, ref) < 1e-4
    assert not frozen.report.unfrozen


def _batchnorm_nodes(gm) -> int:
    modules = dict(gm.named_modules())
    n = 0
    for node in gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.modules.batchnorm._BatchNorm):
            n += 1
        if node.op == "call_function" and "batch_norm" in getattr(node.target, "__name__", ""):
            n += 1
    return n


@pytest.mark.parametrize("name", ["resnet50", "densenet121", "efficientnet_b0", "timm_mobilenetv1_100"])
def test_graph_has_no_batchnorm_and_fewer_nodes(name):
    model = build(name)
    traced = torch.fx.symbolic_trace(copy.deepcopy(model))
    frozen = pyfastblocks.freeze(model, image(name))
    (gm,) = frozen.graph_modules()
    bn = _batchnorm_nodes(traced)
    assert bn > 0 and _batchnorm_nodes(gm) == 0
    assert len(gm.graph.nodes) <= len(traced.graph.nodes) - bn  # every BatchNorm gone, with most activations
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    frozen_convs = [m for m in gm.modules() if isinstance(m, FrozenConv2d)]
    assert len(frozen_convs) == convs
    assert {m.backend for m in frozen_convs} == {"onednn"}  # channels_last float32 on the CPU
    if name == "resnet50":
        assert frozen.report.fused["conv+bn+add+relu"] == 16
    if name == "densenet121":  # the pre-activation BatchNorms follow a concat, not a convolution
        assert frozen.report.fused["bn+relu"] > 0
        assert any(isinstance(m, FrozenAffine) for m in gm.modules())


def test_swapped_model():
    """A swapped model freezes to the original's function; the swapped model itself is not changed."""
    model = build("resnet50")
    swapped = pyfastblocks.swap(model)
    classes = [type(m) for m in swapped.modules()]
    state = {k: v.clone() for k, v in swapped.state_dict().items()}
    x = image("resnet50")
    frozen = pyfastblocks.freeze(swapped, x)
    assert [type(m) for m in swapped.modules()] == classes
    assert any(getattr(c, "_fastblocks_fused", False) for c in classes)
    for k, v in swapped.state_dict().items():
        assert torch.equal(v, state[k])
    assert not any(getattr(type(m), "_fastblocks_fused", False) for m in frozen.modules())
    with torch.no_grad():
        assert rel_err(frozen(x), model(x)) < 1e-4


def test_original_untouched():
    """The original keeps its classes, mode, parameters (values, requires_grad, identity), buffers and hooks."""
    model = randomize(torchvision.models.mobilenet_v2())
    model.train()
    params = {k: (p, p.detach().clone(), p.requires_grad) for k, p in model.named_parameters()}
    buffers = {k: b.clone() for k, b in model.named_buffers()}
    classes = [(n, type(m), m.training) for n, m in model.named_modules()]
    frozen = pyfastblocks.freeze(model, image("mobilenet_v2"))
    assert [(n, type(m), m.training) for n, m in model.named_modules()] == classes
    for k, p in model.named_parameters():
        assert p is params[k][0] and torch.equal(p, params[k][1]) and p.requires_grad == params[k][2]
    for k, b in model.named_buffers():
        assert torch.equal(b, buffers[k])
    # the frozen model shares no tensor with the original
    originals = {t.data_ptr() for t in list(model.parameters()) + list(model.buffers()) if t.numel()}
    assert not any(t.data_ptr() in originals for t in list(frozen.parameters()) + list(frozen.buffers()) if t.numel())


def test_snapshot_ignores_later_changes():
    model = build("efficientnet_b0")
    x = image("efficientnet_b0")
    frozen = pyfastblocks.freeze(model, x)
    with torch.no_grad():
        before = frozen(x)
        for p in model.parameters():
            p.mul_(1.5)
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.add_(1.0)
        model.classifier[1] = nn.Linear(1280, 7)
        assert torch.equal(frozen(x), before)
        assert rel_err(pyfastblocks.freeze(model, x)(x), model(x)) < 1e-4  # freeze again: the new model


def test_training_mode_raises():
    model = build("timm_mobilenetv1_100")
    x = image("timm_mobilenetv1_100")
    frozen = pyfastblocks.freeze(model, x)
    frozen.train()
    with pytest.raises(RuntimeError, match="inference only.*training mode"):
        frozen(x)
    frozen.eval()
    with torch.no_grad():
        frozen(x)


def test_requires_grad_raises():
    model = build("timm_mobilenetv1_100")
    x = image("timm_mobilenetv1_100").requires_grad_()
    frozen = pyfastblocks.freeze(model, x.detach())
    with pytest.raises(RuntimeError, match="for inference and has no gradients.*requires grad"):
        frozen(x)
    with torch.no_grad():
        ref = frozen(x)
    with torch.inference_mode():
        assert torch.equal(frozen(x.detach()), ref)
    out = frozen(x.detach())  # grad mode on, nothing requires grad: runs, and carries no gradient
    assert not out.requires_grad and torch.equal(out, ref)
    assert not any(p.requires_grad for p in frozen.parameters())


def test_tied_to_device_and_dtype():
    model = build("timm_mobilenetv1_100")
    x = image("timm_mobilenetv1_100")
    frozen = pyfastblocks.freeze(model, x)
    assert frozen.to("cpu") is frozen and frozen.float() is frozen  # no change: allowed
    for convert in (lambda m: m.to(torch.float64), lambda m: m.half(), lambda m: m.bfloat16()):
        with pytest.raises(RuntimeError, match="tied to the device and dtype"):
            convert(frozen)
    with pytest.raises(RuntimeError, match="tied to the device and dtype"):
        next(m for m in frozen.modules() if isinstance(m, FrozenConv2d)).double()
    with torch.no_grad():
        with pytest.raises(RuntimeError, match="frozen for torch.float32.*float64"):
            frozen(x.double())
        frozen(x)  # still usable after the refused conversions
    with pytest.raises(ValueError, match="example_input"):
        pyfastblocks.freeze(model, x.double())
    with pytest.raises(RuntimeError, match="snapshot"):
        frozen.load_state_dict(frozen.state_dict())


def test_bad_arguments():
    with pytest.raises(TypeError, match="'model' must be an nn.Module"):
        pyfastblocks.freeze(lambda x: x)
    with pytest.raises(ValueError, match="'memory_format'"):
        pyfastblocks.freeze(nn.Conv2d(3, 3, 1), memory_format=torch.preserve_format)


# ------------------------------------------------------------------------------------------------------------
# Small models: every activation, residual forms, depthwise routes, dtypes, devices


class Block(nn.Module):
    """conv -> BN -> act; ReLU -> depthwise -> BN; + residual -> post (a function); optional SE-like gate."""

    def __init__(self, c, act, post, gate=False):
        super().__init__()
        self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.act = act
        self.dw = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.post = post
        self.gate = nn.Conv2d(c, c, 1) if gate else None

    def forward(self, x):
        y = self.act(self.bn1(self.conv1(x)))
        if self.gate is not None:
            y = y * torch.sigmoid(self.gate(y.mean((2, 3), keepdim=True)))
        y = self.bn2(self.dw(F.relu(y)))
        return self.post(y + x)


class Net(nn.Module):
    def __init__(self, act=None, post=None, c=16):
        super().__init__()
        act = act if act is not None else nn.Hardswish()
        post = post if post is not None else F.silu
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, 2, 1), nn.BatchNorm2d(c), nn.ReLU6(inplace=True))
        self.b1 = Block(c, act, post, gate=True)
        self.b2 = Block(c, nn.LeakyReLU(0.2), torch.relu)
        self.norm = nn.BatchNorm2d(c)
        self.fc = nn.Linear(c, 12)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(12, 5)

    def forward(self, x):
        x = self.b2(self.b1(self.stem(x)))
        x = F.relu(self.norm(x))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc2(self.drop(F.gelu(self.fc(x), approximate="tanh")))


def _module_for(name, slope):
    return {"none": nn.Identity(), "relu": nn.ReLU(), "relu6": nn.ReLU6(), "leaky_relu": nn.LeakyReLU(slope),
            "silu": nn.SiLU(), "hardswish": nn.Hardswish(), "gelu": nn.GELU(), "gelu_tanh": nn.GELU("tanh")}[name]


TABLE_CASES = [(name, 0.01) for name in activations.NAMES if name != "leaky_relu"] + [("leaky_relu", 0.3)]


@pytest.mark.parametrize("memory_format", [CL, torch.contiguous_format], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("case", TABLE_CASES, ids=lambda c: c[0])
def test_every_activation(case, memory_format):
    """Each activation of the table after conv -> BN (a oneDNN post-op) and after the residual add (ReLU: the
    binary post-op; others: applied after it), in both layouts (NCHW: the depthwise kernel with its input ReLU)."""
    name, slope = case
    act = _module_for(name, slope)
    model = randomize(Net(act, lambda t: activations.get(name).function(t, slope))).eval()
    x = torch.randn(2, 3, 20, 20)
    frozen = pyfastblocks.freeze(model, x, memory_format=memory_format)
    with torch.no_grad():
        assert rel_err(frozen(x), model(x)) < 1e-4
    convs = [m for m in frozen.modules() if isinstance(m, FrozenConv2d)]
    assert {m.activation for m in convs} >= ({name} if name != "none" else set())
    assert any(m.add and m.post == name for m in convs)
    if memory_format == torch.contiguous_format:
        dw = [m for m in convs if m.backend == "depthwise"]
        assert len(dw) == 2 and all(m.input_relu for m in dw)
    linears = [m for m in frozen.modules() if isinstance(m, FrozenLinear)]
    assert [m.activation for m in linears] == ["gelu_tanh", "none"]
    assert frozen.report.removed["Dropout"] == 1


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16], ids=str)
def test_dtypes(device, dtype):
    """float64 (ATen convolutions + fastblocks epilogues), bfloat16 (oneDNN on the CPU), float16; CUDA where
    present (cuDNN + fastblocks epilogues)."""
    if device == "cpu" and dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bfloat16 on this CPU")
    torch.manual_seed(0)
    model = randomize(Net()).eval().to(device=device, dtype=dtype)
    x = torch.randn(2, 3, 20, 20, device=device, dtype=dtype)
    frozen = pyfastblocks.freeze(model, x)
    assert frozen.device.type == device and frozen.dtype == dtype
    with torch.no_grad():
        ref = model.double()(x.double()) if dtype != torch.float64 else model(x)
        out = frozen(x)
    assert out.dtype == dtype and out.device.type == device
    tol = {torch.float64: 1e-10, torch.bfloat16: 5e-2, torch.float16: 5e-3}[dtype]
    assert rel_err(out, ref) < tol


def test_cuda_matches_cpu_reference():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    model = build("resnet50").cuda()
    x = image("resnet50").cuda()
    frozen = pyfastblocks.freeze(model, x)
    with torch.no_grad():
        assert rel_err(frozen(x), model(x)) < 1e-4
    assert {m.backend for m in frozen.modules() if isinstance(m, FrozenConv2d)} == {"aten"}


class Reader(nn.Module):
    """The residual, and an SE-gated tensor, are read again after the add / gate: neither may be overwritten."""

    def __init__(self):
        super().__init__()
        self.c0 = nn.Conv2d(3, 8, 3, padding=1)
        self.c1 = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.g = nn.Conv2d(8, 8, 1)

    def forward(self, x):
        a = self.c0(x)
        y = self.bn(self.c1(a)) + a
        z = a * torch.sigmoid(self.g(a.mean((2, 3), keepdim=True)))
        return y + z + a


def test_inplace_only_where_nothing_reads_after():
    model = randomize(Reader()).eval()
    x = torch.randn(2, 3, 12, 12)
    frozen = pyfastblocks.freeze(model, x)
    with torch.no_grad():
        assert rel_err(frozen(x), model(x)) < 1e-5
    assert not any(getattr(m, "inplace_add", False) for m in frozen.modules())
    assert frozen.report.fused["gate (in place)"] == 0
    # ResNet: the residual add writes into the residual's memory where nothing else reads it
    resnet = build("resnet50")
    convs = [m for m in pyfastblocks.freeze(resnet, image("resnet50")).modules() if isinstance(m, FrozenConv2d)]
    assert sum(m.inplace_add for m in convs) == 16  # every block's (layer1.0's residual: its downsample conv's)
    resnet18 = randomize(torchvision.models.resnet18()).eval()
    convs = [m for m in pyfastblocks.freeze(resnet18, image("resnet50")).modules() if isinstance(m, FrozenConv2d)]
    assert sum(m.inplace_add for m in convs) == 7  # all but layer1.0's (its residual is the max-pool's output)


class Untraceable(nn.Module):
    """Data-dependent control flow at the top: torch.fx cannot trace it; its children still freeze."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Sequential(nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))
        self.unused = nn.Conv2d(4, 4, 1)

    def forward(self, x):
        y = self.features(x)
        if y.sum() > 0:
            y = y * 2
        return self.head(y)


def test_untraceable_model_freezes_its_children():
    model = randomize(Untraceable()).eval()
    x = torch.randn(2, 3, 8, 8)
    frozen = pyfastblocks.freeze(model, x)
    unfrozen = dict(frozen.report.unfrozen)
    assert "does not trace" in unfrozen[""] and unfrozen["unused"] == "not called on the example input"
    assert len(frozen.graph_modules()) == 2
    assert "<model>" in str(frozen.report)
    with torch.no_grad():
        assert rel_err(frozen(x), model(x)) < 1e-5
        assert rel_err(frozen(-x), model(-x)) < 1e-5


def test_compile_and_export():
    """Under torch.compile and torch.export a frozen model runs plain ATen ops on its folded weights."""
    model = randomize(Net()).eval()
    x = torch.randn(2, 3, 20, 20)
    frozen = pyfastblocks.freeze(model, x)
    with torch.no_grad():
        ref = frozen(x)
        compiled = torch.compile(frozen)
        assert rel_err(compiled(x), ref) < 1e-5
        exported = torch.export.export(frozen, (x,))
        assert rel_err(exported.module()(x), ref) < 1e-5
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert not any("mkldnn" in t or "batch_norm" in t for t in targets)


def test_pickle_and_deepcopy():
    model = build("timm_efficientnet_b0")
    x = image("timm_efficientnet_b0")
    frozen = pyfastblocks.freeze(model, x)
    with torch.no_grad():
        ref = frozen(x)
        assert torch.equal(copy.deepcopy(frozen)(x), ref)
        buffer = io.BytesIO()
        torch.save(frozen, buffer)
        buffer.seek(0)
        loaded = torch.load(buffer, weights_only=False)
        assert torch.equal(loaded(x), ref)


def test_report_and_printing():
    model = build("resnet50")
    frozen = pyfastblocks.freeze(model, image("resnet50"))
    text = str(frozen.report)
    assert "conv+bn+relu x33" in text and "conv+bn+add+relu x16" in text and "conv:onednn x53" in text
    assert frozen.report.seconds > 0
    assert "FrozenConv2d" in repr(frozen) and "backend='onednn'" in repr(frozen)
    assert "mkldnn" not in frozen.module.code  # the printable graph calls the modules; the lean one the ops
    assert "mkldnn._convolution_pointwise" in frozen.module._lean.code


def test_default_example_input():
    """No example: one image of the model's size (timm's pretrained_cfg; Inception-v3 299 px; else 224 px)."""
    model = randomize(Net()).eval()
    frozen = pyfastblocks.freeze(model)
    x = torch.randn(3, 3, 40, 40)
    with torch.no_grad():
        assert rel_err(frozen(x), model(x)) < 1e-4
    conv = next(m for m in frozen.modules() if isinstance(m, FrozenConv2d))
    assert conv.input_size == [1, 3, 224, 224]


def test_functional_activations_are_recognized():
    """activations.from_call: the functional forms a traced graph records."""
    f = activations.from_call
    assert f(F.relu, (0,), {"inplace": True}) == ("relu", 0.01)
    assert f("relu_", (0,)) == ("relu", 0.01)
    assert f(F.hardtanh, (0, 0.0, 6.0)) == ("relu6", 0.01)
    assert f(F.hardtanh, (0,)) is None
    assert f(F.relu6, (0, True)) == ("relu6", 0.01)
    assert f(F.leaky_relu, (0, 0.2)) == ("leaky_relu", 0.2)
    assert f(F.gelu, (0,), {"approximate": "tanh"}) == ("gelu_tanh", 0.01)
    assert f(F.gelu, (0,)) == ("gelu", 0.01)
    assert f(torch.sigmoid, (0,)) is None
    assert f(operator.add, (0, 1)) is None


def test_hooks_are_kept():
    """A module with hooks is kept as a module (its hooks run), not fused; a model with hooks of its own is frozen
    child by child."""
    model = randomize(Net()).eval()
    model.b1.conv1.register_forward_hook(lambda m, args, out: out * 2)
    model.b2.bn1.register_forward_pre_hook(lambda m, args: (args[0] + 1,))
    x = torch.randn(2, 3, 20, 20)
    frozen = pyfastblocks.freeze(model, x)
    with torch.no_grad():
        assert rel_err(frozen(x), model(x)) < 1e-4
    (gm,) = frozen.graph_modules()
    kept = {type(m) for name, m in gm.named_modules() if name in ("b1.conv1", "b2.bn1")}
    assert kept == {nn.Conv2d, nn.BatchNorm2d}
    model.register_forward_hook(lambda m, args, out: out + 1)
    frozen = pyfastblocks.freeze(model, x)
    assert "has hooks" in dict(frozen.report.unfrozen)[""]
    with torch.no_grad():
        assert rel_err(frozen(x), model(x)) < 1e-4
