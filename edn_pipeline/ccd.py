"""CCD, the controllable creative diffusion adapter (paper §1.2).

CCD is a ControlNet: a trainable copy of the UNet's encoder whose zero-initialised outputs are added to the
frozen UNet's down and mid blocks. Subclassing diffusers' ``ControlNetModel`` keeps it exactly as diffusers
runs, saves, offloads and quantises a ControlNet; only the condition differs (:data:`CONDITION_CHANNELS`
channels: grayscale, propagated hint colours and the hint mask, see :mod:`edn_pipeline.hints`).
"""

import math

import torch
from diffusers import (
    ControlNetModel,
    ModelMixin,  # noqa: F401  model_index.json names this module; diffusers finds the loader here
    UNet2DConditionModel,
)

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

    @classmethod
    def from_controlnet(cls, controlnet: ControlNetModel) -> "CCDModel":
        """Start from an existing ControlNet whose condition is a 3-channel image (e.g. a recolouring one).

        Its condition embedding keeps its weights for the three grayscale channels, which carry exactly the
        grayscale photo such a ControlNet was fed; the hint colour and mask channels start at zero, so without
        hints the CCD predicts what the ControlNet did.
        """
        if controlnet.config.conditioning_channels != 3:
            raise ValueError(
                f"from_controlnet needs a ControlNet with a 3-channel condition, this one has "
                f"{controlnet.config.conditioning_channels}"
            )
        config = {k: v for k, v in controlnet.config.items() if not k.startswith("_")}
        # A channel flip ("bgr") would move the hint channels; three equal gray channels need none.
        config.update(conditioning_channels=CONDITION_CHANNELS, controlnet_conditioning_channel_order="rgb")
        ccd = cls.from_config(config)
        state = dict(controlnet.state_dict())
        name = "controlnet_cond_embedding.conv_in.weight"
        weight = state[name]
        if controlnet.config.controlnet_conditioning_channel_order == "bgr":
            weight = weight.flip(1)
        hint_weights = weight.new_zeros(weight.shape[0], CONDITION_CHANNELS - 3, *weight.shape[2:])
        state[name] = torch.cat([weight, hint_weights], dim=1)
        ccd.load_state_dict(state)
        if ccd.dtype != controlnet.dtype:  # only cast when needed: ModelMixin.to(dtype) always warns
            ccd = ccd.to(dtype=controlnet.dtype)
        return ccd.to(controlnet.device)


def load_ccd(pretrained_model_name_or_path: str, **kwargs) -> CCDModel:
    """A saved CCD as it is, or a saved ControlNet (3-channel condition) turned into one.

    ``kwargs`` go to ``from_pretrained`` (``dtype``, ``revision``, ``variant``, ``subfolder``, ...).
    """
    location = {k: v for k, v in kwargs.items() if k in ("revision", "subfolder")}
    config = ControlNetModel.load_config(pretrained_model_name_or_path, **location)
    if config.get("_class_name") == CCDModel.__name__:
        return CCDModel.from_pretrained(pretrained_model_name_or_path, **kwargs)
    return CCDModel.from_controlnet(ControlNetModel.from_pretrained(pretrained_model_name_or_path, **kwargs))
