"""Standard architectures from torchvision, adapted to small images (the usual "CIFAR variants").

For inputs of 64 pixels or less the ImageNet stem (7x7 stride-2 conv + max-pool) becomes a 3x3 stride-1 conv, as
in the CIFAR ResNet-18 that the unlearnable-examples papers train (e.g. HanxunH/Unlearnable-Examples).
"""
from __future__ import annotations

from torch import nn
from torchvision import models as tvm



def _small(image_size: int) -> bool:
    return image_size <= 64


def _resnet(builder, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    m = builder(num_classes=num_classes)
    if _small(image_size):
        m.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        m.maxpool = nn.Identity()
    else:
        m.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return m


def resnet18(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _resnet(tvm.resnet18, in_channels, num_classes, image_size)


def resnet50(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    return _resnet(tvm.resnet50, in_channels, num_classes, image_size)


def _vgg(builder, in_channels: int, num_classes: int, image_size: int, image_width: int | None) -> nn.Module:
    m = builder(num_classes=num_classes)
    m.features[0] = nn.Conv2d(in_channels, 64, 3, padding=1)
    if min(image_size, image_width or image_size) < 32:  # five 2x2 pools would shrink a side of 28 pixels to
        # nothing: drop the last one (the shorter side decides: 40 x 28 as 28 x 28)
        last = max(i for i, layer in enumerate(m.features) if isinstance(layer, nn.MaxPool2d))
        m.features[last] = nn.Identity()
    if _small(image_size):
        m.avgpool = nn.AdaptiveAvgPool2d(1)
        m.classifier = nn.Linear(512, num_classes)
    return m


def vgg11(in_channels: int, num_classes: int, image_size: int, image_width: int | None = None) -> nn.Module:
    return _vgg(tvm.vgg11_bn, in_channels, num_classes, image_size, image_width)


def vgg16(in_channels: int, num_classes: int, image_size: int, image_width: int | None = None) -> nn.Module:
    return _vgg(tvm.vgg16_bn, in_channels, num_classes, image_size, image_width)


def mobilenetv2(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    m = tvm.mobilenet_v2(num_classes=num_classes)
    m.features[0][0] = nn.Conv2d(in_channels, 32, 3, 1 if _small(image_size) else 2, 1, bias=False)
    return m


def densenet121(in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    m = tvm.densenet121(num_classes=num_classes)
    if _small(image_size):
        m.features.conv0 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        m.features.pool0 = nn.Identity()
    else:
        m.features.conv0 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return m
