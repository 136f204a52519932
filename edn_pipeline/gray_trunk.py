"""GrayTrunk: the per-pixel features of a gray image that the learned hint and colour-word maps are read from.

Both :class:`~edn_pipeline.hint_propagator.HintPropagator` (which pixels belong together) and
:class:`~edn_pipeline.palette_prior.PalettePrior` (which named colour a pixel is) need to know what each pixel of
the gray image is part of, and nothing else: a stack of residual dilated 3×3 convolutions sees far across the
image at the working size for a few ten thousand weights, and never sees a colour.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GrayTrunk(nn.Module):
    """Gray image (B, 1, h, w) in [0, 1] → features (B, channels, h, w).

    Args:
        channels: width of every convolution.
        dilations: one residual 3×3 convolution per entry, with that dilation (the default (1, 2, 4, 8, 16, 1)
            sees about 65 pixels across, half the 128 px working size of edn-tiny).
    """

    def __init__(self, channels: int, dilations: tuple[int, ...]):
        super().__init__()
        self.conv_in = nn.Conv2d(1, channels, 3, padding=1)
        self.blocks = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=d, dilation=d) for d in dilations)
        self.norms = nn.ModuleList(nn.GroupNorm(8, channels) for _ in dilations)

    def forward(self, gray: torch.Tensor) -> torch.Tensor:
        # Channels-last activations and weights: on the CPU the dilated convolutions run 1.8 times as fast at edn-tiny's
        # 128 × 96 working size (63 → 34 ms on two threads, 100 → 70 on one; a training step 8 % faster).
        hidden = F.gelu(self.conv_in(gray - 0.5)).contiguous(memory_format=torch.channels_last)
        for conv, norm in zip(self.blocks, self.norms):
            weight = conv.weight.contiguous(memory_format=torch.channels_last)
            hidden = hidden + F.conv2d(
                F.gelu(norm(hidden)), weight, conv.bias, padding=conv.padding, dilation=conv.dilation
            )
        return hidden
