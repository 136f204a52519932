"""HintPropagator: a learned, colour-agnostic spread of a user's colour hints over the grayscale image.

Levin et al.'s solve (:mod:`edn_pipeline.propagation`) spreads each hint along pixels of similar gray, so colour
leaks through soft edges and every pixel gets some hint's colour, however unlike it is. Here a small convolutional
network embeds every pixel of the gray image, and each pixel takes the hints' colours weighted by how alike its
embedding is to theirs (and how near they are), or stays neutral when no hint is alike. The network never sees a
colour, only which pixels belong together, so what it learns from a few thousand photos carries over to photos it
never saw: on 19 training-split photos it did not train on, edn-tiny's 10-hint PSNR went from 27.12 to 27.79 dB
with this map in its condition instead of Levin's.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from skimage.color import lab2rgb
from torch import nn

from .gray_trunk import GrayTrunk
from .luminance import chroma, to_lightness

# Hints attended to per image: every hinted pixel of a click or two, an even subsample of a painted hint image or
# the training's superpixel regions (thousands of pixels), where more would only repeat the same colours.
MAX_SEEDS = 256
# a*b* are divided by this inside the network, so targets and colours are of order one.
CHROMA_SCALE = 100.0


class HintPropagator(ModelMixin, ConfigMixin):
    """Gray image and hints (positions, CIE a*b*) → a*b* at every pixel, a hint-weighted mean or neutral.

    Args:
        channels (`int`): width of the convolutional trunk.
        embedding_dim (`int`): size of the per-pixel embedding compared between pixels and hints.
        dilations (`tuple[int]`): the dilations of the :class:`~edn_pipeline.gray_trunk.GrayTrunk`'s convolutions.
    """

    @register_to_config
    def __init__(self, channels: int = 48, embedding_dim: int = 16, dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 1)):
        super().__init__()
        self.trunk = GrayTrunk(channels, dilations)
        # The embedding, then one logit per pixel for "no hint applies here" (the neutral option).
        self.conv_out = nn.Conv2d(channels, embedding_dim + 1, 1)
        self.log_sharpness = nn.Parameter(torch.tensor(0.0))  # how fast weight falls with embedding distance
        self.log_distance_weight = nn.Parameter(torch.tensor(1.0))  # ... and with distance in the image

    def forward(
        self, gray: torch.Tensor, positions: torch.LongTensor, colours: torch.Tensor, valid: torch.BoolTensor
    ) -> torch.Tensor:
        """a*b* (B, 2, h, w) from the gray images (B, 1, h, w) in [0, 1] and K hints per image: ``positions``
        (B, K, 2) as (row, column), ``colours`` (B, K, 2) their a*b*, ``valid`` (B, K) which of the K are hints."""
        batch, _, height, width = gray.shape
        out = self.conv_out(self.trunk(gray)).flatten(2)
        dim = self.config.embedding_dim
        embedding, neutral = out[:, :dim], out[:, dim:]
        flat = positions[..., 0] * width + positions[..., 1]
        at_hints = embedding.gather(2, flat[:, None, :].expand(-1, dim, -1))  # (B, dim, K)
        # Squared distances (B, K, h·w) between every hint's embedding and every pixel's.
        distance = (
            embedding.pow(2).sum(1, keepdim=True)
            - 2 * at_hints.transpose(1, 2) @ embedding
            + at_hints.pow(2).sum(1)[..., None]
        )
        rows = torch.arange(height, device=gray.device, dtype=gray.dtype).repeat_interleave(width)
        columns = torch.arange(width, device=gray.device, dtype=gray.dtype).repeat(height)
        spatial = torch.hypot(rows - positions[..., :1], columns - positions[..., 1:]) / math.hypot(height, width)
        logits = -distance * self.log_sharpness.exp() - spatial * self.log_distance_weight.exp() * 10
        logits = logits.masked_fill(~valid[..., None], -1e4)
        weights = torch.cat([neutral, logits], 1).softmax(1)
        chroma = (colours.transpose(1, 2) / CHROMA_SCALE) @ weights[:, 1:]  # the neutral option adds 0
        return (chroma * CHROMA_SCALE).view(batch, 2, height, width)

    @torch.no_grad()
    def hint_colours(self, gray: np.ndarray, seed: np.ndarray, seed_rgb: np.ndarray) -> np.ndarray:
        """The propagated colours (h, w, 3) in [0, 1] of seed pixels ``seed`` (h, w) with colours ``seed_rgb``
        (h, w, 3) over ``gray`` (h, w) in [0, 1]: each pixel's a*b* on the gray's own L*."""
        rows, columns = np.nonzero(seed)
        if len(rows) > MAX_SEEDS:  # evenly spaced, so the same hints always give the same map
            keep = np.linspace(0, len(rows) - 1, MAX_SEEDS).round().astype(int)
            rows, columns = rows[keep], columns[keep]
        colours = chroma(seed_rgb[rows, columns][None])[0]  # a*b* as the propagator stage computes its targets
        parameter = next(self.parameters())
        propagated = self(
            torch.from_numpy(np.asarray(gray, np.float32))[None, None].to(parameter),
            torch.from_numpy(np.stack([rows, columns], 1))[None].to(parameter.device),
            torch.from_numpy(colours)[None].to(parameter),
            torch.ones(1, len(rows), dtype=torch.bool, device=parameter.device),
        )[0]
        lightness = to_lightness(np.asarray(gray, np.float32))[..., None]
        lab = np.concatenate([lightness, propagated.permute(1, 2, 0).cpu().numpy()], axis=-1).astype(np.float64)
        with warnings.catch_warnings():  # skimage warns of the negative Z it clips, for colours outside sRGB
            warnings.simplefilter("ignore", UserWarning)
            return np.clip(lab2rgb(lab), 0.0, 1.0).astype(np.float32)
