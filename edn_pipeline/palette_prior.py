"""PalettePrior: where the colours a prompt names go, read from the gray image.

A word gives colours without positions: "a photo, mostly blue and green" says which colours the photo has, not
which pixel has which. edn-tiny's text encoder is too small to learn that from a few thousand captions (naming a
held-out photo's own colours gained 0.19 dB through the prompt alone). This network learns only the part a gray
image can answer: for every pixel, which of the named basic colour terms it is (or black, white or gray), and how
saturated. Each term keeps one learned hue, so the network chooses between two or three colours the user gave
instead of guessing colours from gray, which memorises at this data size. Its map enters the adapter's condition
where a hint map would (:meth:`~edn_pipeline.image_processor.EDNImageProcessor.palette_condition`).
"""

from __future__ import annotations

import numpy as np
import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

from .colour_terms import BASIC_COLOUR_TERMS, CHROMATIC_TERMS, term_chroma
from .gray_trunk import GrayTrunk
from .luminance import compose_with_lightness, to_lightness

# Achromatic terms are always allowed: any photo has pixels no colour word describes.
ALWAYS_ALLOWED = tuple(term for term in BASIC_COLOUR_TERMS if term not in CHROMATIC_TERMS)
# a*b* are divided by this inside the network, so outputs are of order one.
CHROMA_SCALE = 100.0


def allowed_terms(terms: list[str], device=None) -> torch.BoolTensor:
    """(len(BASIC_COLOUR_TERMS),) mask of the ``terms`` named plus the achromatic ones."""
    return torch.tensor([term in terms or term in ALWAYS_ALLOWED for term in BASIC_COLOUR_TERMS], device=device)


def places_colour(terms: list[str]) -> bool:
    """Whether the prior has a colour to place for a prompt naming ``terms``: black, white and gray alone leave its
    map uniformly gray, which places nothing ("a black and white photo" describes the input) and cost edn-tiny
    0.18-0.23 dB against the text encoder alone on 21 photos outside the held-out split named only by them."""
    return any(term in CHROMATIC_TERMS for term in terms)


class PalettePrior(ModelMixin, ConfigMixin):
    """Gray image and the basic colour terms named → a*b* at every pixel.

    Each pixel's a*b* is the mean over the allowed terms, weighted by a softmax of the network's per-pixel logits,
    of that term's learned a*b* (none for black, white and gray) times a per-pixel saturation in (0, 2).

    Args:
        channels (`int`): width of the :class:`~edn_pipeline.gray_trunk.GrayTrunk`.
        dilations (`tuple[int]`): the dilations of its convolutions.
    """

    @register_to_config
    def __init__(self, channels: int = 48, dilations: tuple[int, ...] = (1, 2, 4, 8, 16, 1)):
        super().__init__()
        terms = len(BASIC_COLOUR_TERMS)
        self.trunk = GrayTrunk(channels, dilations)
        self.conv_out = nn.Conv2d(channels, 2 * terms, 1)  # per term: a logit and a saturation
        # each chromatic term's a*b*, starting at its focal colour (colour_terms' prototypes); black, white and gray
        # have none, so "mostly gray" can only take colour away
        focal = np.stack([term_chroma(term) for term in CHROMATIC_TERMS])
        self.term_chroma = nn.Parameter(torch.from_numpy(focal).float() / CHROMA_SCALE)

    def forward(self, gray: torch.Tensor, allowed: torch.BoolTensor) -> torch.Tensor:
        """a*b* (B, 2, h, w) from gray images (B, 1, h, w) in [0, 1] and ``allowed`` (B, terms): which basic colour
        terms each image's prompt names (:func:`allowed_terms`)."""
        terms = len(BASIC_COLOUR_TERMS)
        out = self.conv_out(self.trunk(gray))
        logits = out[:, :terms].masked_fill(~allowed[:, :, None, None], torch.finfo(out.dtype).min)
        weights = logits.softmax(1)[:, :, None]  # (B, terms, 1, h, w)
        saturation = 2 * torch.sigmoid(out[:, terms:])[:, :, None]
        achromatic = self.term_chroma.new_zeros(len(ALWAYS_ALLOWED), 2)
        hues = torch.cat([self.term_chroma, achromatic])  # in BASIC_COLOUR_TERMS' order: the chromatic terms first
        chroma = (weights * saturation * hues[None, :, :, None, None]).sum(1)
        return chroma * CHROMA_SCALE

    @torch.no_grad()
    def hint_colours(self, gray: np.ndarray, terms: list[str]) -> np.ndarray:
        """The named ``terms`` placed over ``gray`` (h, w) in [0, 1]: (h, w, 3) colours in [0, 1] on its L*."""
        parameter = next(self.parameters())
        chroma = self(
            torch.from_numpy(np.asarray(gray, np.float32))[None, None].to(parameter),
            allowed_terms(terms, parameter.device)[None],
        )[0]
        ab = chroma.permute(1, 2, 0).float().cpu().numpy()
        return compose_with_lightness(to_lightness(np.asarray(gray, np.float32)), ab)
