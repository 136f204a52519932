"""EDNImageProcessor: from the user's pictures to the model's tensors and back, on the pipeline's device.

In the manner of diffusers' ``VaeImageProcessor``: :meth:`~EDNImageProcessor.preprocess` reads any supported
input, validates its hints, measures its CIE L* at its own size and makes the gray image and the adapter's
condition at the working size; :meth:`~EDNImageProcessor.postprocess` takes the decoded image's chroma, upsamples it
and composes it on the input's L*. The pipeline, the training data, ``edn evaluate``, the demo and the benchmarks
all go through it, so training and inference see the same gray image and condition for the same photo.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config

from .errors import EDNInputError
from .hints import hint_condition, parse_hints, render_hints, render_palette
from .luminance import compose, lab_chroma, lightness, luminance_to_gray, read_pixels

# The largest input accepted, checked from the file's header before decoding: an A4 page scanned at 1,000 dpi is
# 97 megapixels, and a larger header more likely broken or hostile (a 74-byte PNG can declare 100 megapixels).
# Raise it with ``EDNImageProcessor(max_pixels=...)``; Pillow still refuses files over twice its own
# ``PIL.Image.MAX_IMAGE_PIXELS`` (179 megapixels) unless that is raised too.
MAX_PIXELS = 100_000_000


# Inputs more than this many times the working size are first averaged down to it: an antialiased bicubic resize
# weighs every source pixel under a kernel as wide as the scale, which for a 100,000-pixel-wide input would need
# gigabytes of weights; averaging first keeps that to a few taps (photos up to 4× the working size are unaffected).
PRE_SHRINK = 4


@dataclass
class EDNImages:
    """What :meth:`EDNImageProcessor.preprocess` gives the model, one entry per input image.

    Attributes:
        lightness: each input's CIE L* (H, W) at its own size, on the device: what the output keeps.
        gray: the grayscale images (B, 1, h, w) in [0, 1] at the working size.
        condition: the adapter's condition (B, 7, h, w): gray x3, hint colours, hint confidence.
    """

    lightness: list[torch.Tensor]
    gray: torch.Tensor
    condition: torch.Tensor


class EDNImageProcessor(ConfigMixin):
    """Reads inputs and hints into the model's tensors and composes its colours on the input's lightness.

    Args:
        resolution (`int`): the longer side of the working size, in pixels.
        size_multiple (`int`): both working sides are multiples of it (what the UNet's downsampling needs).
        max_pixels (`int`): the largest input, in pixels, read at all (see :data:`MAX_PIXELS`).
    """

    config_name = "image_processor_config.json"

    @register_to_config
    def __init__(self, resolution: int = 512, size_multiple: int = 64, max_pixels: int = MAX_PIXELS):
        super().__init__()

    def working_size(self, width: int, height: int) -> tuple[int, int]:
        """(width, height) at which an input of that size is colourised: its aspect, longer side = resolution."""
        multiple = self.config.size_multiple
        scale = self.config.resolution / max(width, height)
        return tuple(max(multiple, round(side * scale / multiple) * multiple) for side in (width, height))

    # ----------------------------------------------------------------------------------------------- input

    def read(self, image) -> torch.Tensor:
        """The pixels (H, W, C) of one input, refused before decoding when it has more than ``max_pixels``."""
        with warnings.catch_warnings():
            # Pillow warns from 89 megapixels; max_pixels is the limit that decides.
            warnings.simplefilter("ignore", PIL.Image.DecompressionBombWarning)
            return read_pixels(image, self.config.max_pixels)

    def preprocess(
        self, images: list, hints: list, device: torch.device | str | None = None, hint_propagator=None
    ) -> EDNImages:
        """The model's inputs for ``images`` (any supported input) with their ``hints`` (one entry per image),
        spread by the model's ``hint_propagator`` if it has one (else by Levin et al.'s solve).

        Every image is read and every hint validated before any lightness is measured, so bad input fails fast.
        All images share the working size of the first one.
        """
        pixels = [self.read(image) for image in images]
        sizes = [(p.shape[1], p.shape[0]) for p in pixels]
        parsed = [parse_hints(image_hints, size) for image_hints, size in zip(hints, sizes)]
        work_size = self.working_size(*sizes[0])
        lightness_maps, grays, conditions = [], [], []
        for image_pixels, image_hints, size in zip(pixels, parsed, sizes):
            l_star = lightness(image_pixels.to(device))
            gray = self.gray(l_star, work_size)
            gray_values = gray.cpu().numpy()
            hint_rgb, confidence = render_hints(gray_values, image_hints, size, hint_propagator)
            condition = torch.from_numpy(hint_condition(gray_values, hint_rgb, confidence)).permute(2, 0, 1)
            lightness_maps.append(l_star)
            grays.append(gray)
            conditions.append(condition.to(gray.device))
        return EDNImages(lightness_maps, torch.stack(grays)[:, None], torch.stack(conditions))

    @staticmethod
    def palette_condition(gray: torch.Tensor, terms: list[str], palette_prior) -> torch.Tensor:
        """The adapter's condition (7, h, w) for a gray image (1, h, w) without hints whose prompt names the colour
        ``terms`` (at least one chromatic, :func:`~edn_pipeline.palette_prior.places_colour`): the model's
        ``palette_prior`` places them where a hint map would go (:func:`render_palette`)."""
        gray_values = gray[0].cpu().numpy()
        hint_rgb, confidence = render_palette(gray_values, terms, palette_prior)
        return torch.from_numpy(hint_condition(gray_values, hint_rgb, confidence)).permute(2, 0, 1).to(gray.device)

    @staticmethod
    def gray(l_star: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """The gray image (h, w) in [0, 1] of an L* map at ``size`` (width, height).

        L* is resized (bicubic, antialiased), then turned to gray: the conversion runs at the working size, and
        the gray image the model sees is the lightness the output keeps, averaged.
        """
        width, height = size
        l_star = l_star[None, None]
        if l_star.shape[-2] > PRE_SHRINK * height or l_star.shape[-1] > PRE_SHRINK * width:
            shrunk = (min(l_star.shape[-2], PRE_SHRINK * height), min(l_star.shape[-1], PRE_SHRINK * width))
            l_star = F.adaptive_avg_pool2d(l_star, shrunk)
        small = F.interpolate(l_star, size=(height, width), mode="bicubic", antialias=True)
        return luminance_to_gray(small[0, 0].clamp(0, 100))

    # ----------------------------------------------------------------------------------------------- output

    def postprocess(self, decoded: torch.Tensor, lightness_maps: list[torch.Tensor], output_type: str = "pil"):
        """Each decoded image's (B, 3, h, w, in [0, 1]) chroma, upsampled and composed on its input's L*.

        ``output_type`` "pil" gives PIL images, "np" (H, W, 3) float arrays in [0, 1], "pt" (3, H, W) tensors;
        images of one size are stacked.
        """
        ab = lab_chroma(decoded.float().to(lightness_maps[0].device))
        dtype = torch.uint8 if output_type == "pil" else torch.float32
        outputs = [compose(l_star, image_ab, dtype) for l_star, image_ab in zip(lightness_maps, ab)]
        if output_type == "pil":
            return [self._pil(rgb.cpu().numpy()) for rgb in outputs]
        if output_type == "np":
            outputs = [rgb.cpu().numpy() for rgb in outputs]
        else:
            outputs = [rgb.permute(2, 0, 1) for rgb in outputs]
        if len({tuple(o.shape) for o in outputs}) == 1:
            return np.stack(outputs) if output_type == "np" else torch.stack(outputs)
        return outputs

    @staticmethod
    def _pil(rgb: np.ndarray) -> PIL.Image.Image:
        try:
            return PIL.Image.fromarray(rgb)
        except MemoryError:  # Pillow allocates an image line by line: a 100-million-pixel row is too long for it
            height, width = rgb.shape[:2]
            raise EDNInputError(f"Pillow cannot hold a {width}×{height} image; ask for output_type='np'") from None
