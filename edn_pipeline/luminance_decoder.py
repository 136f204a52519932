"""The luminance-aware decoder (paper §1.3, Eq. 5).

The SD VAE decoder loses fine structure when it invents pixels from a 1/8-size latent; the grayscale input
still has that structure. A small grayscale encoder therefore feeds every up block of the decoder:
``F'_Di = F_Di + Conv1x1(F_Gi)``. The 1×1 convolutions start at zero, so a decoder built with
:meth:`LuminanceDecoder.from_vae` decodes exactly as the VAE it came from until it is trained.
"""

import torch
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, Decoder, DecoderOutput
from diffusers.models.controlnets.controlnet import zero_module
from torch import nn


class GrayscaleEncoder(nn.Module):
    """A conv pyramid over the grayscale image: level k is at 1/2**k of the image size."""

    def __init__(self, block_out_channels: tuple[int, ...]):
        super().__init__()
        self.levels = nn.ModuleList()
        in_channels = 1
        for level, channels in enumerate(block_out_channels):
            self.levels.append(
                nn.Sequential(
                    nn.Conv2d(in_channels, channels, 3, stride=1 if level == 0 else 2, padding=1),
                    nn.SiLU(),
                    nn.Conv2d(channels, channels, 3, padding=1),
                    nn.SiLU(),
                )
            )
            in_channels = channels

    def forward(self, gray: torch.Tensor) -> list[torch.Tensor]:
        features = []
        for level in self.levels:
            gray = level(gray)
            features.append(gray)
        return features


class LuminanceDecoder(ModelMixin, AutoencoderMixin, ConfigMixin):
    """SD's KL-f8 decoder with grayscale features injected into every up block.

    ``forward(latents, gray)`` takes unscaled latents (as ``AutoencoderKL.decode`` does) and the grayscale
    image in [-1, 1] at the output size, shape (B, 1, H, W); it returns the colour image in [-1, 1].
    ``scaling_factor`` is the VAE's latent scale, kept here so that inference needs no VAE.
    ``enable_slicing()`` decodes a batch one image at a time. Tiling is not offered: EDN always decodes at
    the model's working resolution (large inputs only get their chroma upsampled), so it never needs it.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["ResnetBlock2D"]

    @register_to_config
    def __init__(
        self,
        latent_channels: int = 4,
        out_channels: int = 3,
        up_block_types: tuple[str, ...] = ("UpDecoderBlock2D",) * 4,
        block_out_channels: tuple[int, ...] = (128, 256, 512, 512),
        layers_per_block: int = 2,
        norm_num_groups: int = 32,
        act_fn: str = "silu",
        mid_block_add_attention: bool = True,
        use_post_quant_conv: bool = True,
        scaling_factor: float = 0.18215,
        use_gray_encoder: bool = True,
        gray_encoder_block_out_channels: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.use_slicing = False
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1) if use_post_quant_conv else None
        self.decoder = Decoder(
            in_channels=latent_channels,
            out_channels=out_channels,
            up_block_types=up_block_types,
            block_out_channels=block_out_channels,
            layers_per_block=layers_per_block,
            norm_num_groups=norm_num_groups,
            act_fn=act_fn,
            mid_block_add_attention=mid_block_add_attention,
        )
        # Up block i starts at 1/2**levels[i] of the output size: one halving per upsampler still ahead of it.
        up_blocks = self.decoder.up_blocks
        self._levels = [sum(block.upsamplers is not None for block in up_blocks[i:]) for i in range(len(up_blocks))]
        self.gray_encoder = None
        self.gray_injections = None
        if use_gray_encoder:
            gray_channels = gray_encoder_block_out_channels or tuple(max(c // 2, 1) for c in block_out_channels)
            if len(gray_channels) != max(self._levels) + 1:
                raise ValueError(
                    f"gray_encoder_block_out_channels needs {max(self._levels) + 1} entries (one per scale of the "
                    f"decoder), got {len(gray_channels)}"
                )
            self.gray_encoder = GrayscaleEncoder(tuple(gray_channels))
            self.gray_injections = nn.ModuleList(
                zero_module(nn.Conv2d(gray_channels[level], block.resnets[0].in_channels, 1))
                for level, block in zip(self._levels, up_blocks)
            )
        self.gradient_checkpointing = False

    @property
    def scale_factor(self) -> int:
        """How many output pixels one latent pixel becomes along each side."""
        return 2 ** max(self._levels)

    @classmethod
    def from_vae(cls, vae: AutoencoderKL, **config_overrides) -> "LuminanceDecoder":
        """Build a decoder that starts as ``vae``'s decoder (same weights, zero grayscale injection)."""
        vae_config = vae.config
        config = dict(
            latent_channels=vae_config.latent_channels,
            out_channels=vae_config.out_channels,
            up_block_types=tuple(vae_config.up_block_types),
            block_out_channels=tuple(vae_config.block_out_channels),
            layers_per_block=vae_config.layers_per_block,
            norm_num_groups=vae_config.norm_num_groups,
            act_fn=vae_config.act_fn,
            mid_block_add_attention=vae_config.get("mid_block_add_attention", True),
            use_post_quant_conv=vae_config.get("use_post_quant_conv", True),
            scaling_factor=vae_config.scaling_factor,
        )
        config.update(config_overrides)
        decoder = cls(**config)
        decoder.decoder.load_state_dict(vae.decoder.state_dict())
        if decoder.post_quant_conv is not None:
            decoder.post_quant_conv.load_state_dict(vae.post_quant_conv.state_dict())
        if decoder.dtype != vae.dtype:  # only cast when needed: ModelMixin.to(dtype) always warns
            decoder = decoder.to(dtype=vae.dtype)
        return decoder.to(vae.device)

    def _run(self, module, *args):
        if torch.is_grad_enabled() and self.gradient_checkpointing:
            return self._gradient_checkpointing_func(module, *args)
        return module(*args)

    def forward(
        self, latents: torch.Tensor, gray: torch.Tensor | None = None, return_dict: bool = True
    ) -> DecoderOutput | tuple[torch.Tensor]:
        if self.gray_encoder is not None:
            expected = (latents.shape[0], 1, latents.shape[2] * self.scale_factor, latents.shape[3] * self.scale_factor)
            if gray is None or tuple(gray.shape) != expected:
                got = None if gray is None else tuple(gray.shape)
                raise ValueError(f"LuminanceDecoder needs a grayscale image of shape {expected}, got {got}")
        if self.use_slicing and latents.shape[0] > 1:
            grays = gray.split(1) if gray is not None else [None] * latents.shape[0]
            sample = torch.cat([self._decode(z, g) for z, g in zip(latents.split(1), grays)])
        else:
            sample = self._decode(latents, gray)
        if not return_dict:
            return (sample,)
        return DecoderOutput(sample=sample)

    def _decode(self, latents: torch.Tensor, gray: torch.Tensor | None) -> torch.Tensor:
        gray_features = None if self.gray_encoder is None else self._run(self.gray_encoder, gray.to(latents.dtype))
        sample = latents if self.post_quant_conv is None else self.post_quant_conv(latents)
        decoder = self.decoder
        sample = decoder.conv_in(sample)
        sample = self._run(decoder.mid_block, sample)
        for i, up_block in enumerate(decoder.up_blocks):
            if gray_features is not None:
                sample = sample + self.gray_injections[i](gray_features[self._levels[i]])
            sample = self._run(up_block, sample)
        return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(sample)))
