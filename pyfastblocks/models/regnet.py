"""The RegNet family's swap() rules: torchvision ``ResBottleneckBlock`` (regnet_x_* / regnet_y_*) and timm's
``Bottleneck`` (timm regnetx_* / regnety_*, whose convs are ConvNormAct blocks swapped on their own).

``activation(proj(x) + f(x))``: ``f`` (a ``BottleneckTransform``: Conv2dNormActivation a, b, a squeeze-excitation
module in RegNetY, then c = conv + BN) runs as it is up to c, whose BN, the residual add and the activation are one
pass (:func:`conv_bn_add`); the projection (a Conv2dNormActivation without activation) is swapped on its own.
"""
from torch import Tensor, nn

from . import _rules as R
from ._fused import act_name, conv_bn_add, drop_path_inactive, norm_act, unhooked


def res_bottleneck_forward(self, x: Tensor) -> Tensor:
    layers = list(self.f._modules.values())
    h = x
    for m in layers[:-1]:
        h = m(h)
    shortcut = self.proj(x) if self.proj is not None else x
    last = layers[-1]
    act = act_name(self.activation)
    if unhooked(last) and act is not None and not R.cna_problem(last, "c") and len(last) == 2:
        conv, bn, _ = R.cna_parts(last)
        return conv_bn_add(h, conv, bn, shortcut, activation=act, add="promote")
    return self.activation(shortcut + last(h))


def _res_bottleneck_check(m, parent, name):
    problem = R.children_problem(m, ("f", "activation"), ("proj",))
    if problem:
        return problem
    if not isinstance(m.f, nn.Sequential) or len(m.f) == 0:
        return "f is not a non-empty nn.Sequential"
    if "forward" in type(m.f).__dict__:
        return "f has a forward of its own"
    last = list(m.f)[-1]
    return R.problems(R.cna_problem(last, "f.c"),
                      None if len(last) == 2 else "f.c has an activation (the add comes after it)",
                      R.act_problem(m.activation, "activation", None))


def timm_bottleneck_forward(self, x: Tensor) -> Tensor:
    """timm ``regnet.Bottleneck``: conv1, conv2 (ConvNormAct, fused on their own), se as they are; conv3's conv + BN,
    the shortcut add and act3 in one pass while drop_path is the identity."""
    h = self.conv2(self.conv1(x))
    h = self.se(h)
    act = act_name(self.act3)
    c3 = self.conv3
    if self.downsample is not None and act is not None and drop_path_inactive(self.drop_path) and unhooked(c3) \
            and not R.timm_cna_problem(c3, "conv3", ("none",)):
        return conv_bn_add(h, c3.conv, norm_act(c3.bn)[0], self.downsample(x), activation=act, add="promote")
    h = c3(h)
    if self.downsample is not None:
        h = self.drop_path(h) + self.downsample(x)
    return self.act3(h)


def _timm_bottleneck_check(m, parent, name):
    return R.problems(
        R.children_problem(m, ("conv1", "conv2", "se", "conv3", "act3"), ("downsample", "drop_path")),
        R.timm_cna_problem(m.conv3, "conv3", ("none",)), R.act_problem(m.act3, "act3", None),
        R.has_attributes(m, "downsample", "drop_path"))


SWAP_RULES = [
    R.Rule("torchvision_ResBottleneckBlock", "torchvision.models.regnet.ResBottleneckBlock",
           {"forward": res_bottleneck_forward},
           "f's Conv2dNormActivations fused (their own rule); f.c's conv + BN + residual add + activation: one pass",
           _res_bottleneck_check, guards=("f.**", "activation")),
    R.Rule("timm_regnet_Bottleneck", "timm.models.regnet.Bottleneck", {"forward": timm_bottleneck_forward},
           "conv1/conv2 fused (ConvNormAct rule); conv3's conv + BN + shortcut add + act3: one pass",
           _timm_bottleneck_check, guards=("conv3.**", "act3")),
]
