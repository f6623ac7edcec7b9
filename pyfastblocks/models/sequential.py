"""The swap() rules of the generic containers: ``nn.Sequential`` (and its subclasses without a forward of their own:
torchvision DenseNet's ``_Transition``, timm's ``DenseTransition``, ...), torchvision's ``Conv2dNormActivation`` and
timm's ``ConvNormAct``. They are also the fallback for blocks of unknown families: swap() visits every child of a
module it does not recognize, so their Sequential / Conv2dNormActivation / ConvNormAct children still lose their
BatchNorm and activation passes (a custom forward is never assumed to be a plain chain). timm's
``SeparableConvNormAct`` (VoVNet's depthwise blocks) and ``BatchNormAct2d`` (a BatchNorm + activation module: on its own
in pre-activation blocks) are here too: generic layers of timm.layers."""
from torch import Tensor, nn

from . import _rules as R
from ._fused import bn_act, fused_sequential_forward, norm_act, run_conv_norm_act, sequential_plan


def _sequential_check(m, parent, name):
    return None if sequential_plan(m) is not None else "nothing to fuse"


def _conv_norm_act_check(m, parent=None, name=""):
    return R.problems(R.conv_problem(m.conv, "conv"), R.norm_problem(m.bn, "bn"),
                      None if getattr(m, "aa", None) is None or type(m.aa) is nn.Identity else "has anti-aliasing")


def conv_norm_act_forward(self, x: Tensor) -> Tensor:
    """timm ``ConvNormAct``: conv -> bn (BatchNormAct2d: its activation) fused; anti-aliasing after, as timm."""
    x = run_conv_norm_act(x, self.conv, self.bn)
    aa = getattr(self, "aa", None)
    return aa(x) if aa is not None else x


def separable_conv_norm_act_forward(self, x: Tensor) -> Tensor:
    """timm ``SeparableConvNormAct``: conv_dw as it is; conv_pw + bn (BatchNormAct2d: its activation) fused."""
    return run_conv_norm_act(self.conv_dw(x), self.conv_pw, self.bn)


def _separable_check(m, parent=None, name=""):
    return R.problems(R.children_problem(m, ("conv_dw", "conv_pw", "bn")), R.conv_problem(m.conv_pw, "conv_pw"),
                      R.norm_problem(m.bn, "bn"))


def batchnorm_act_forward(self, x: Tensor) -> Tensor:
    """timm ``BatchNormAct2d`` on its own (pre-activation blocks: DPN, ResNetV2, ...): BN + activation, one pass."""
    return bn_act(x, self, norm_act(self)[1])


def _batchnorm_act_check(m, parent=None, name=""):
    spec = norm_act(m)
    if spec is None:
        return "its drop is not an Identity, or its act is not an activation of the table"
    return None if spec[1] != "none" else "nothing to fuse"  # a BN alone: one pass either way


_SEQUENTIAL_HOW = "conv -> BN -> activation runs: one conv_bn_act each (BN -> activation: one pass)"

# Sequentials: the plan, made at every call, runs a child with hooks as itself (no guarded children)
SWAP_RULES = [
    R.Rule("Sequential", "torch.nn.modules.container.Sequential", {"forward": fused_sequential_forward},
           _SEQUENTIAL_HOW, _sequential_check, handles_hooks=True, subclasses=True),
    R.Rule("torchvision_Conv2dNormActivation", "torchvision.ops.misc.Conv2dNormActivation",
           {"forward": fused_sequential_forward}, _SEQUENTIAL_HOW, _sequential_check, handles_hooks=True),
    R.Rule("timm_ConvNormAct", "timm.layers.conv_bn_act.ConvNormAct", {"forward": conv_norm_act_forward},
           "conv+bn+act fused", _conv_norm_act_check, guards=("conv", "bn.**")),
    R.Rule("timm_SeparableConvNormAct", "timm.layers.separable_conv.SeparableConvNormAct",
           {"forward": separable_conv_norm_act_forward}, "pointwise conv+bn+act fused", _separable_check,
           guards=("conv_pw", "bn.**")),
    R.Rule("timm_BatchNormAct2d", "timm.layers.norm_act.BatchNormAct2d", {"forward": batchnorm_act_forward},
           "BN + activation: one pass", _batchnorm_act_check, guards=("act", "drop")),
    # squeeze-excitation: named in the report with the reason instead of "not a recognized block"
    *(R.Rule(f"se_{path.rsplit('.', 1)[1]}", path, {}, "", R.left_alone(
        "squeeze-excitation: runs on [N, C, 1, 1] maps; x * gate stays a call (in timm ResNet blocks it joins the "
        "residual add's pass)"))
      for path in ("torchvision.ops.misc.SqueezeExcitation", "timm.layers.squeeze_excite.SEModule",
                   "timm.models._efficientnet_blocks.SqueezeExcite")),
]
