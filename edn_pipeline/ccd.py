"""CCD, the controllable creative diffusion adapter (paper §1.2).

CCD is a ControlNet: a trainable copy of the UNet's encoder whose zero-initialised outputs are added to the
frozen UNet's down and mid blocks. Subclassing diffusers' ``ControlNetModel`` keeps it exactly as diffusers
runs, saves, offloads and quantises a ControlNet; only the condition differs (:data:`CONDITION_CHANNELS`
channels: grayscale, propagated hint colours and the hint mask, see :mod:`edn_pipeline.hints`).
"""

from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers import ModelMixin  # noqa: F401  model_index.json names this module; diffusers finds the loader here

from .hints import CONDITION_CHANNELS


class CCDModel(ControlNetModel):
    """ControlNet-style adapter conditioned on the grayscale image and colour hints."""

    @classmethod
    def from_unet(
        cls,
        unet: UNet2DConditionModel,
        conditioning_embedding_out_channels: tuple[int, ...] | None = (16, 32, 96, 256),
        load_weights_from_unet: bool = True,
        conditioning_channels: int = CONDITION_CHANNELS,
        **kwargs,
    ) -> "CCDModel":
        """Copy the UNet's encoder into a new adapter whose outputs start at zero.

        ``conditioning_embedding_out_channels`` must downsample the condition image to the latent size: one
        stride-2 stage per entry after the first, so SD's VAE (factor 8) needs four entries.
        """
        return super().from_unet(
            unet,
            conditioning_embedding_out_channels=conditioning_embedding_out_channels,
            load_weights_from_unet=load_weights_from_unet,
            conditioning_channels=conditioning_channels,
            **kwargs,
        )
