"""CCD, the controllable creative diffusion adapter (paper §1.2).

CCD is a ControlNet: a trainable copy of the UNet's encoder whose zero-initialised outputs are added to the
frozen UNet's down and mid blocks. Subclassing diffusers' ``ControlNetModel`` keeps it exactly as diffusers
runs, saves, offloads and quantises a ControlNet; only the condition differs (:data:`CONDITION_CHANNELS`
channels: grayscale, propagated hint colours and the hint mask, see :mod:`edn_pipeline.hints`).
"""

import math

from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers import ModelMixin  # noqa: F401  model_index.json names this module; diffusers finds the loader here

from .hints import CONDITION_CHANNELS


class CCDModel(ControlNetModel):
    """ControlNet-style adapter conditioned on the grayscale image and colour hints."""

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        vae_scale_factor: int = 8,
        conditioning_embedding_out_channels: tuple[int, ...] | None = None,
        load_weights_from_unet: bool = True,
        conditioning_channels: int = CONDITION_CHANNELS,
        **kwargs,
    ) -> "CCDModel":
        """Copy the UNet's encoder into a new adapter (on its device and dtype) whose outputs start at zero.

        The condition image is downsampled to the latent size by one stride-2 stage per entry of
        ``conditioning_embedding_out_channels`` after the first; by default those are ControlNet's
        (16, 32, 96, 256) cut or extended to match ``vae_scale_factor`` (8 for SD).
        """
        if conditioning_embedding_out_channels is None:
            stages = int(math.log2(vae_scale_factor))
            if 2**stages != vae_scale_factor:
                raise ValueError(f"vae_scale_factor must be a power of two, got {vae_scale_factor}")
            conditioning_embedding_out_channels = ((16, 32, 96) + (256,) * stages)[: stages + 1]
        ccd = super().from_unet(
            unet,
            conditioning_embedding_out_channels=tuple(conditioning_embedding_out_channels),
            load_weights_from_unet=load_weights_from_unet,
            conditioning_channels=conditioning_channels,
            **kwargs,
        )
        if ccd.dtype != unet.dtype:  # only cast when needed: ModelMixin.to(dtype) always warns
            ccd = ccd.to(dtype=unet.dtype)
        return ccd.to(unet.device)
