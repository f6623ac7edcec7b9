"""Drop-in models built from the fused blocks, with the state_dict keys of the reference implementations:

- ``resnet18/34/50/101/152``: torchvision (ResNet v1.5);
- ``inception_v3``: torchvision;
- ``xception``: timm ``legacy_xception`` (the Keras port);
- ``mobilenet_v1(alpha=1.0)``: timm ``mobilenetv1_100``; ``mobilenet_v2``: torchvision;
- ``vgg16``, ``vgg16_bn``, ``vgg19``, ``vgg19_bn``: torchvision.

Every constructor takes ``num_classes`` and ``weights`` (a state_dict or a path to one, loaded with
``strict=True``; nothing is downloaded). :func:`pyfastblocks.swap` gives an existing torchvision/timm model the same
fused forwards.
"""
from ._fused import DEPTHWISE_BACKEND, TRAINING_BACKEND
from .inception import Inception3, InceptionOutputs, inception_v3
from .mobilenet import MobileNetV1, MobileNetV2, mobilenet_v1, mobilenet_v2
from .resnet import ResNet, resnet18, resnet34, resnet50, resnet101, resnet152
from .vgg import VGG, vgg16, vgg16_bn, vgg19, vgg19_bn
from .xception import Xception, xception

__all__ = [
    "DEPTHWISE_BACKEND", "TRAINING_BACKEND",
    "Inception3", "InceptionOutputs", "inception_v3",
    "MobileNetV1", "MobileNetV2", "mobilenet_v1", "mobilenet_v2",
    "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
    "VGG", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
    "Xception", "xception",
]
