"""The DLA family's swap() rules (timm dla34 / dla46_c / ...): ``DlaBasic`` (conv1 + bn1 + ReLU fused; conv2 + bn2 +
shortcut add + ReLU one pass) and ``DlaRoot`` (the concat, then conv + bn (+ the first child's add) + ReLU fused)."""
from typing import List, Optional

import torch
from torch import Tensor

from . import _rules as R
from ._fused import act_name, conv_bn_act, conv_bn_add


def dla_basic_forward(self, x: Tensor, shortcut: Optional[Tensor] = None,
                      children: Optional[List[Tensor]] = None) -> Tensor:
    if shortcut is None:
        shortcut = x
    act = act_name(self.relu)
    out = conv_bn_act(x, self.conv1, self.bn1, act)
    return conv_bn_add(out, self.conv2, self.bn2, shortcut, activation=act, add="bn")  # out += shortcut


def dla_root_forward(self, x_children: List[Tensor]) -> Tensor:
    x = torch.cat(x_children, 1)
    act = act_name(self.relu)
    if self.shortcut:
        return conv_bn_add(x, self.conv, self.bn, x_children[0], activation=act, add="bn")  # x += x_children[0]
    return conv_bn_act(x, self.conv, self.bn, act)


def _dla_basic_check(m, parent, name):
    return R.problems(R.children_problem(m, ("conv1", "bn1", "relu", "conv2", "bn2")),
                      R.conv_problem(m.conv1, "conv1"), R.conv_problem(m.conv2, "conv2"),
                      R.bn_problem(m.bn1, "bn1"), R.bn_problem(m.bn2, "bn2"), R.act_problem(m.relu, "relu", None))


def _dla_root_check(m, parent, name):
    return R.problems(R.children_problem(m, ("conv", "bn", "relu")), R.conv_problem(m.conv, "conv"),
                      R.bn_problem(m.bn, "bn"), R.act_problem(m.relu, "relu", None), R.has_attributes(m, "shortcut"))


SWAP_RULES = [
    R.Rule("timm_DlaBasic", "timm.models.dla.DlaBasic", {"forward": dla_basic_forward},
           "conv1+bn1+relu fused; conv2+bn2+add+relu fused", _dla_basic_check,
           guards=("conv1", "bn1", "relu", "conv2", "bn2")),
    R.Rule("timm_DlaRoot", "timm.models.dla.DlaRoot", {"forward": dla_root_forward},
           "conv+bn(+add)+relu fused (the concat stays)", _dla_root_check, guards=("conv", "bn", "relu")),
]
