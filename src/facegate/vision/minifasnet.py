"""MiniFASNetV2 and MiniFASNetV1SE, the passive anti-spoofing networks of minivision's
Silent-Face-Anti-Spoofing (Apache-2.0), laid out so that its released state dicts load with
``strict=True`` (after their ``module.`` prefix is removed).

Written from the checkpoints' key names and shapes (``torch.load(..., weights_only=True)``):

- ``conv1`` (3->32, 3x3, stride 2) and ``conv2_dw`` (32, depthwise 3x3) are conv + BN + PReLU
  (keys ``conv``, ``bn``, ``prelu``).
- ``conv_23``, ``conv_34``, ``conv_45`` are depthwise-separable bottlenecks: ``conv`` (1x1 expand,
  + BN + PReLU), ``conv_dw`` (depthwise 3x3, stride 2, + BN + PReLU), ``project`` (1x1, + BN, no
  activation). Four stride-2 stages take 80x80 to 5x5.
- ``conv_3``, ``conv_4``, ``conv_5`` are ``model.i`` stacks of the same bottleneck at stride 1 with
  an identity shortcut (in and out widths equal: 64, 128, 128). Their expansion widths differ per
  block and per network (the "keep" lists below, read from ``model.i.conv.conv.weight``).
- V1SE's last block of each stack also has ``se_module``: global average pool, ``fc1`` (1x1 conv,
  C -> C/4) + ``bn1``, ReLU, ``fc2`` (C/4 -> C) + ``bn2``, sigmoid, multiplying the block's output
  before the shortcut is added.
- Head: ``conv_6_sep`` (1x1, 128->512, + BN + PReLU), ``conv_6_dw`` (depthwise 5x5 over the 5x5
  map, + BN, no activation), flatten, ``linear`` (512->128, no bias), ``bn`` (BatchNorm1d),
  dropout (inactive in eval), ``prob`` (128->3, no bias): three logits. Class 1 is "live".

No layer in the checkpoints has a convolution bias; every BatchNorm has PyTorch's defaults (eps 1e-5).
The Fourier-spectrum auxiliary branch of the reference's training wrapper is not in the
checkpoints and not needed for inference.

This module imports torch at the top; only :mod:`facegate.vision.liveness_import` imports it, and
only inside its functions: serving never needs torch.
"""

from __future__ import annotations

import torch
from torch import nn

INPUT_SIZE = 80
CLASSES = 3
#: Expansion widths of each bottleneck, in order: conv_23, conv_3 (4 blocks), conv_34, conv_4 (6), conv_45, conv_5 (2).
KEEP: dict[str, tuple[int, ...]] = {
    "minifasnet-v2": (103, 13, 13, 13, 13, 231, 231, 52, 26, 77, 26, 26, 308, 26, 26),
    "minifasnet-v1se": (103, 13, 26, 13, 52, 231, 154, 52, 26, 52, 26, 26, 308, 26, 26),
}
#: Which networks put a squeeze-and-excitation module on the last block of each stride-1 stack.
SE = {"minifasnet-v2": False, "minifasnet-v1se": True}
ARCHS = frozenset(KEEP)


class ConvBlock(nn.Module):
    """Convolution (no bias), BatchNorm, and PReLU unless ``act`` is False (a linear block)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, padding: int = 0, groups: int = 1, act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(cout)
        self.prelu = nn.PReLU(cout) if act else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return self.prelu(x) if self.prelu is not None else x


class SEModule(nn.Module):
    """Squeeze and excitation: x * sigmoid(bn2(fc2(relu(bn1(fc1(mean(x))))))), reduction 4."""

    def __init__(self, channels: int, reduction: int = 4) -> None:
        super().__init__()
        mid = channels // reduction
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(mid, channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.sigmoid(self.bn2(self.fc2(self.relu(self.bn1(self.fc1(self.avg_pool(x)))))))
        return x * w


class Bottleneck(nn.Module):
    """1x1 expand (PReLU), 3x3 depthwise (PReLU, ``stride``), 1x1 project (linear); with ``residual``
    the input is added back (after the SE module, if any)."""

    def __init__(self, cin: int, mid: int, cout: int, stride: int, residual: bool, se: bool = False) -> None:
        super().__init__()
        self.conv = ConvBlock(cin, mid, 1)
        self.conv_dw = ConvBlock(mid, mid, 3, stride, 1, groups=mid)
        self.project = ConvBlock(mid, cout, 1, act=False)
        self.se_module = SEModule(cout) if se else None
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.conv_dw(self.conv(x)))
        if self.se_module is not None:
            y = self.se_module(y)
        return x + y if self.residual else y


class Stack(nn.Module):
    """Stride-1 residual bottlenecks of one width (``model.0`` ...); the last one with SE if asked."""

    def __init__(self, channels: int, mids: tuple[int, ...], se_last: bool) -> None:
        super().__init__()
        n = len(mids)
        self.model = nn.Sequential(
            *(Bottleneck(channels, m, channels, 1, True, se=se_last and i == n - 1) for i, m in enumerate(mids))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class MiniFASNet(nn.Module):
    """80x80 BGR (0..255, NCHW) -> 3 logits; ``arch`` is "minifasnet-v2" or "minifasnet-v1se"."""

    def __init__(self, arch: str) -> None:
        super().__init__()
        if arch not in KEEP:
            raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(sorted(KEEP))}")
        k, se = KEEP[arch], SE[arch]
        self.conv1 = ConvBlock(3, 32, 3, 2, 1)
        self.conv2_dw = ConvBlock(32, 32, 3, 1, 1, groups=32)
        self.conv_23 = Bottleneck(32, k[0], 64, 2, False)
        self.conv_3 = Stack(64, k[1:5], se)
        self.conv_34 = Bottleneck(64, k[5], 128, 2, False)
        self.conv_4 = Stack(128, k[6:12], se)
        self.conv_45 = Bottleneck(128, k[12], 128, 2, False)
        self.conv_5 = Stack(128, k[13:15], se)
        self.conv_6_sep = ConvBlock(128, 512, 1)
        self.conv_6_dw = ConvBlock(512, 512, 5, 1, 0, groups=512, act=False)
        self.linear = nn.Linear(512, 128, bias=False)
        self.bn = nn.BatchNorm1d(128)
        self.drop = nn.Dropout(0.2)
        self.prob = nn.Linear(128, CLASSES, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        x = self.conv_4(self.conv_34(x))
        x = self.conv_5(self.conv_45(x))
        x = self.conv_6_dw(self.conv_6_sep(x))
        x = self.bn(self.linear(torch.flatten(x, 1)))
        return self.prob(self.drop(x))


class WithSoftmax(nn.Module):
    """The network and its class probabilities: outputs (logits, probs), as the ONNX export has them."""

    def __init__(self, net: MiniFASNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits, torch.softmax(logits, dim=1)


def build(arch: str) -> MiniFASNet:
    return MiniFASNet(arch)
