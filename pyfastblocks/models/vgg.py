"""VGG-16/19 and their ``_bn`` variants (torchvision keys) with each conv (+ BN) + ReLU as one ``conv_bn_act``.

VGG has no BatchNorm (the ``_bn`` variants aside), no residual add and no concat: its only tail is the bias + ReLU
after each convolution, which eager PyTorch already runs as bias-in-conv + one in-place ReLU pass. Fusing the ReLU
into the convolution (oneDNN's post-op on CPU in eval) saves that one pass per layer, a few percent of a forward
that the 3x3 convolutions and the 100M-parameter classifier dominate; expect little gain (see the benchmark).
"""
from typing import List, Union

import torch
from torch import Tensor, nn

from ._fused import FusedSequential, load_weights

__all__ = ["VGG", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]

_CFGS = {
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _features(cfg: List[Union[str, int]], batch_norm: bool) -> FusedSequential:
    layers: List[nn.Module] = []
    in_channels = 3
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.Conv2d(in_channels, v, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(v))
            layers.append(nn.ReLU(inplace=True))
            in_channels = v
    return FusedSequential(*layers)


class VGG(nn.Module):
    """torchvision's ``VGG`` (keys ``features.<i>``, ``classifier.<i>``) with fused conv (+ BN) + ReLU."""

    _fastblocks_fused = True

    def __init__(self, features: nn.Module, num_classes: int = 1000, init_weights: bool = True,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, 4096), nn.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(4096, num_classes),
        )
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(x)
        x = self.avgpool(x)
        x = torch.flatten(x, 1)
        return self.classifier(x)


def _vgg(cfg: str, batch_norm: bool, num_classes: int, weights, dropout: float) -> VGG:
    model = VGG(_features(_CFGS[cfg], batch_norm), num_classes, init_weights=weights is None, dropout=dropout)
    return load_weights(model, weights)


def vgg16(num_classes: int = 1000, weights=None, dropout: float = 0.5) -> VGG:
    """VGG-16 (torchvision keys). ``weights``: a state_dict or a path to one (``strict=True``)."""
    return _vgg("D", False, num_classes, weights, dropout)


def vgg16_bn(num_classes: int = 1000, weights=None, dropout: float = 0.5) -> VGG:
    """VGG-16 with BatchNorm (torchvision keys)."""
    return _vgg("D", True, num_classes, weights, dropout)


def vgg19(num_classes: int = 1000, weights=None, dropout: float = 0.5) -> VGG:
    """VGG-19 (torchvision keys)."""
    return _vgg("E", False, num_classes, weights, dropout)


def vgg19_bn(num_classes: int = 1000, weights=None, dropout: float = 0.5) -> VGG:
    """VGG-19 with BatchNorm (torchvision keys)."""
    return _vgg("E", True, num_classes, weights, dropout)
