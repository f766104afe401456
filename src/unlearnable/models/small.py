"""Small fast architectures: the CPU default victim ``cnn``, the airbench-style ``convnet`` and ``linear``."""
from __future__ import annotations

import torch
from torch import nn

from ..errors import UnlearnableError


def conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class Scale(nn.Module):
    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


def cnn(in_channels: int, num_classes: int, image_size: int, width: int = 32) -> nn.Module:
    """Four 3x3 conv-BN-ReLU layers (widths w, 2w, 2w, 4w), three 2x2 max-pools, global max-pool, linear.

    Sized so one Fashion-MNIST epoch takes a few seconds on two CPU cores (see BENCHMARKS.md).
    """
    w = width
    return nn.Sequential(
        *conv_bn(in_channels, w), nn.MaxPool2d(2),
        *conv_bn(w, 2 * w), nn.MaxPool2d(2),
        *conv_bn(2 * w, 2 * w),
        *conv_bn(2 * w, 4 * w), nn.MaxPool2d(2),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(4 * w, num_classes),
    )


class _ConvGroup(nn.Sequential):
    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.MaxPool2d(2),
            nn.BatchNorm2d(c_out), nn.GELU(),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.GELU())


def convnet(in_channels: int, num_classes: int, image_size: int, width: int = 64) -> nn.Module:
    """The network of KellerJordan/cifar10-airbench (airbench94): a 2x2 stem, three groups of
    conv-pool-BN-GELU-conv-BN-GELU with widths (w, 4w, 4w), global max-pool, a linear head scaled by 1/9."""
    widths = (width, 4 * width, 4 * width)
    return nn.Sequential(
        nn.Conv2d(in_channels, 24, 2, padding=1 if image_size % 2 == 0 else 0, bias=False),
        nn.GELU(),
        _ConvGroup(24, widths[0]), _ConvGroup(widths[0], widths[1]), _ConvGroup(widths[1], widths[2]),
        nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(widths[2], num_classes, bias=False), Scale(1 / 9),
    )


def linear(in_channels: int, num_classes: int, image_size: int, image_width: int | None = None) -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(in_channels * image_size * (image_width or image_size), num_classes))


def lenet(in_channels: int, num_classes: int, image_size: int, image_width: int | None = None) -> nn.Module:
    """The official MNIST classifier (``create_net``): two 5x5 conv-BN-ReLU-avgpool layers, a 500-unit hidden
    layer. Four times cheaper than ``cnn``, which matters because the pseudo-update is differentiated twice."""
    def side(n: int) -> int:
        return ((n - 4) // 2 - 4) // 2

    if min(side(image_size), side(image_width or image_size)) < 1:
        raise UnlearnableError(f"lenet needs images of at least 16 x 16 pixels, got {image_size} x "
                               f"{image_width or image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, 5), nn.BatchNorm2d(20), nn.ReLU(), nn.AvgPool2d(2),
        nn.Conv2d(20, 50, 5), nn.BatchNorm2d(50), nn.ReLU(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(50 * side(image_size) * side(image_width or image_size), 500), nn.BatchNorm1d(500), nn.ReLU(),
        nn.Linear(500, num_classes),
        nn.BatchNorm1d(num_classes))
