"""IResNet ("IR") face-recognition backbones, laid out like AdaFace's ``net.py`` so that its
released checkpoints load with ``strict=True``.

Only the plain ``ir`` mode at 112x112 input is built (IR-18, IR-50, IR-101: the networks AdaFace
publishes weights for). Module names, their order inside each ``Sequential``, the layer shapes and
the BatchNorm settings (PyTorch defaults: eps 1e-5, momentum 0.1) follow the official code, since a
state-dict key is nothing but that path: ``input_layer.0.weight``, ``body.3.shortcut_layer.1.running_var``,
``output_layer.3.weight`` and so on.

This module imports torch at the top; only :mod:`facegate.vision.model_import` imports it, and only inside
its functions, so serving never needs torch.
"""

from __future__ import annotations

import torch
from torch import nn

#: Units per stage. AdaFace's "ir_101" is ``num_layers=100`` in its code: [3, 13, 30, 3].
STAGE_UNITS: dict[str, tuple[int, int, int, int]] = {
    "ir18": (2, 2, 2, 2),
    "ir50": (3, 4, 14, 3),
    "ir101": (3, 13, 30, 3),
}
#: Output channels of the four stages (all ``ir`` depths up to 100 layers use basic blocks).
STAGE_CHANNELS = (64, 128, 256, 512)
EMBEDDING_SIZE = 512
INPUT_SIZE = 112


class BasicBlockIR(nn.Module):
    """Pre-activation basic block: BN, 3x3 conv, BN, PReLU, 3x3 conv (strided), BN; plus a shortcut.

    The shortcut is a 1x1 max-pool with the block's stride when the channel count is unchanged (it
    only subsamples), else a strided 1x1 conv and a BN.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        if in_channels == out_channels:
            self.shortcut_layer: nn.Module = nn.MaxPool2d(1, stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.PReLU(out_channels),
            nn.Conv2d(out_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IResNet(nn.Module):
    """``input_layer`` -> ``body`` (flat sequence of blocks) -> ``output_layer``.

    ``forward`` returns ``(embedding / norm, norm)`` as AdaFace does: a unit vector (N, 512) and the
    feature norm (N, 1), which AdaFace reads as an image-quality signal.
    """

    def __init__(self, units: tuple[int, ...]) -> None:
        super().__init__()
        if len(units) != len(STAGE_CHANNELS):
            raise ValueError(f"expected {len(STAGE_CHANNELS)} stages, got {units}")
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(64),
            nn.PReLU(64),
        )
        blocks: list[nn.Module] = []
        in_ch = 64
        for out_ch, n in zip(STAGE_CHANNELS, units):
            # The first unit of every stage halves the resolution: 112 -> 56 -> 28 -> 14 -> 7.
            blocks.append(BasicBlockIR(in_ch, out_ch, 2))
            blocks.extend(BasicBlockIR(out_ch, out_ch, 1) for _ in range(n - 1))
            in_ch = out_ch
        self.body = nn.Sequential(*blocks)
        final = INPUT_SIZE // 16
        self.output_layer = nn.Sequential(
            nn.BatchNorm2d(in_ch),
            nn.Dropout(0.4),
            nn.Flatten(1),
            nn.Linear(in_ch * final * final, EMBEDDING_SIZE),
            nn.BatchNorm1d(EMBEDDING_SIZE, affine=False),
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.output_layer(self.body(self.input_layer(x)))
        norm = torch.norm(x, 2, 1, True)
        return x / norm, norm


def build_backbone(arch: str) -> IResNet:
    """An untrained backbone for ``arch`` (one of ``ir18``, ``ir50``, ``ir101``)."""
    try:
        units = STAGE_UNITS[arch]
    except KeyError:
        raise ValueError(f"unknown architecture {arch!r}; known: {', '.join(STAGE_UNITS)}") from None
    return IResNet(units)
