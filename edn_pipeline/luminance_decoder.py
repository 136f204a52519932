"""The luminance-aware VQ-Diffusion decoder (paper §1.3, Eq. 5 and 6).

The SD VAE decoder loses fine structure when it invents pixels from a 1/8-size latent; the grayscale input
still has that structure. A small grayscale encoder therefore feeds every up block of the decoder:
``F'_Di = F_Di + Conv1x1(F_Gi)``. The 1×1 convolutions start at zero, so a decoder built with
:meth:`LuminanceDecoder.from_vae` decodes exactly as the VAE it came from until it is trained.

Before decoding, a vector quantiser can map the colour latent to codebook tokens and a discrete-diffusion
refiner (:mod:`edn_pipeline.token_refiner`) can re-noise and denoise those tokens. The three parts switch
on and off in the config, so the paper's Table 3 variants (plain KL-f8 decoder, luminance-aware decoder,
VQ-Diffusion decoder) are three configurations of this one class.
"""

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, ConfigMixin, ModelMixin, VQDiffusionScheduler
from diffusers.configuration_utils import register_to_config
from diffusers.models.autoencoders.vae import AutoencoderMixin, Decoder, DecoderOutput, VectorQuantizer
from diffusers.models.controlnets.controlnet import zero_module
from diffusers.utils import BaseOutput
from torch import nn

from .mask_and_replace import q_sample
from .token_refiner import TokenRefiner


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


# The decoder's options that describe the VAE it decodes for (the rest describe EDN's additions).
VAE_CONFIG_KEYS = (
    "latent_channels",
    "out_channels",
    "up_block_types",
    "block_out_channels",
    "layers_per_block",
    "norm_num_groups",
    "act_fn",
    "mid_block_add_attention",
    "use_post_quant_conv",
    "scaling_factor",
    "latents_mean",
    "latents_std",
)


@dataclass
class QuantizerOutput(BaseOutput):
    """The quantised latent (straight-through gradients), its tokens (B, h, w) and the commitment loss."""

    latents: torch.Tensor
    tokens: torch.LongTensor
    commitment_loss: torch.Tensor


class LuminanceDecoder(ModelMixin, AutoencoderMixin, ConfigMixin):
    """SD's KL-f8 decoder with grayscale features in every up block, and an optional VQ-Diffusion stage.

    ``forward(latents, gray, encoder_hidden_states=None, vq_steps=None, temperature=1.0, generator=None,
    truncation_rate=None)`` takes unscaled latents (as ``AutoencoderKL.decode`` does) and the grayscale image in
    [-1, 1] at the output size, shape (B, 1, H, W); it returns the colour image in [-1, 1]. With the refiner,
    ``vq_steps`` steps of refinement run (0: none; ``None``: ``config.vq_inference_steps``), conditioned on the
    grayscale image and the text embeddings ``encoder_hidden_states``; ``temperature`` scales the token logits
    and ``truncation_rate`` (``None``: ``config.vq_truncation_rate``) keeps only the likeliest tokens that add
    up to that probability, as diffusers' VQ-Diffusion pipeline does.
    ``scaling_factor`` (and ``latents_mean``, ``latents_std`` when the latents are scaled per channel:
    :mod:`edn_pipeline.latent_scale`) is the VAE's latent scale, kept here so that inference needs no VAE.
    ``enable_slicing()`` decodes a batch one image at a time. Tiling is not offered: EDN always decodes at
    the model's working resolution (large inputs only get their chroma upsampled), so it never needs it.
    """

    _supports_gradient_checkpointing = True
    _no_split_modules = ["ResnetBlock2D", "BasicTransformerBlock"]

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
        latents_mean: tuple[float, ...] | None = None,
        latents_std: tuple[float, ...] | None = None,
        use_gray_encoder: bool = True,
        gray_encoder_block_out_channels: tuple[int, ...] | None = None,
        use_quantizer: bool = False,
        codebook_size: int = 1024,
        commitment_beta: float = 0.25,
        use_refiner: bool = False,
        refiner_dim: int = 256,
        refiner_layers: int = 4,
        refiner_heads: int = 4,
        refiner_cross_attention_dim: int = 768,
        vq_num_train_timesteps: int = 100,
        vq_inference_steps: int = 20,
        vq_truncation_rate: float = 1.0,
    ):
        super().__init__()
        if use_refiner and not (use_quantizer and use_gray_encoder):
            raise ValueError(
                "use_refiner needs use_quantizer (it refines tokens) and use_gray_encoder (its condition)"
            )
        if not 0 <= vq_inference_steps <= vq_num_train_timesteps:
            raise ValueError(f"vq_inference_steps must be in [0, {vq_num_train_timesteps}], got {vq_inference_steps}")
        if not 0 < vq_truncation_rate <= 1:
            raise ValueError(f"vq_truncation_rate must be in (0, 1], got {vq_truncation_rate}")
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
        self.quantizer = (
            VectorQuantizer(codebook_size, latent_channels, beta=commitment_beta, legacy=False, sane_index_shape=True)
            if use_quantizer
            else None
        )
        self.refiner = None
        if use_refiner:
            self.refiner = TokenRefiner(
                codebook_size,
                vq_num_train_timesteps,
                gray_channels[-1],
                refiner_cross_attention_dim,
                dim=refiner_dim,
                num_layers=refiner_layers,
                num_heads=refiner_heads,
            )
            self.vq_scheduler = VQDiffusionScheduler(codebook_size + 1, num_train_timesteps=vq_num_train_timesteps)
        self.gradient_checkpointing = False

    @property
    def scale_factor(self) -> int:
        """How many output pixels one latent pixel becomes along each side."""
        return 2 ** max(self._levels)

    @classmethod
    def from_vae(cls, vae: AutoencoderKL, **config_overrides) -> "LuminanceDecoder":
        """Build a decoder that starts as ``vae``'s decoder (same weights, zero grayscale injection).

        ``config_overrides`` set the other options (``use_quantizer``, ``use_refiner``, ``codebook_size``, ...).
        """
        config = {key: vae.config[key] for key in VAE_CONFIG_KEYS if key in vae.config}
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

    # ------------------------------------------------------------------------------------------- the parts

    def encode_gray(self, gray: torch.Tensor) -> list[torch.Tensor]:
        """Grayscale-encoder features, level k at 1/2**k of the image size (the last at the latent size)."""
        return self._run(self.gray_encoder, gray)

    def quantize(self, latents: torch.Tensor) -> QuantizerOutput:
        """Nearest codebook entries of the latent; gradients pass straight through to ``latents``."""
        quantized, commitment_loss, (_, _, tokens) = self.quantizer(latents)
        return QuantizerOutput(latents=quantized, tokens=tokens, commitment_loss=commitment_loss)

    def token_log_probs(
        self,
        tokens: torch.LongTensor,
        timestep: torch.LongTensor,
        gray_features: list[torch.Tensor],
        encoder_hidden_states: torch.Tensor | None,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """The refiner's log p(x_0 | x_t), (B, K, h·w), for noised tokens (B, h, w) at per-example steps."""
        if encoder_hidden_states is None:  # no prompt: attend to a single null token
            dim = self.config.refiner_cross_attention_dim
            encoder_hidden_states = gray_features[-1].new_zeros(tokens.shape[0], 1, dim)
        return self.refiner(tokens, timestep, gray_features[-1], encoder_hidden_states, temperature)

    def refine(
        self,
        tokens: torch.LongTensor,
        gray_features: list[torch.Tensor],
        encoder_hidden_states: torch.Tensor | None,
        steps: int,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        truncation_rate: float = 1.0,
    ) -> torch.LongTensor:
        """Re-noise the tokens to step ``steps - 1`` of the mask-and-replace process and denoise them to 0.

        Each step samples from the refiner's prediction truncated to ``truncation_rate``: the last step draws
        every token anew, and on held-out photos whose tokens were right, 3 steps cost edn-tiny 3.1 dB drawing
        from all 4,096 codes, 1.5 dB from those adding up to 0.5 and 0.7 dB taking the likeliest.
        """
        batch, height, width = tokens.shape
        scheduler = self.vq_scheduler
        scheduler.set_timesteps(self.config.vq_num_train_timesteps, device=tokens.device)
        start = torch.full((batch,), steps - 1, dtype=torch.long, device=tokens.device)
        sample = q_sample(tokens.flatten(1), start, scheduler, generator=generator)
        for step in range(steps - 1, -1, -1):
            timestep = torch.full((batch,), step, dtype=torch.long, device=tokens.device)
            log_x0 = self.token_log_probs(
                sample.view(batch, height, width), timestep, gray_features, encoder_hidden_states, temperature
            )
            if truncation_rate < 1:  # 1 keeps every token: skip the sort of 4,096 codes per token
                log_x0 = self.truncate(log_x0, truncation_rate)
            log_x0 = log_x0.clamp(-70)  # -70: the pipeline's finite log 0
            sample = scheduler.step(log_x0, step, sample, generator=generator).prev_sample
        return sample.view(batch, height, width)

    # Copied from diffusers.pipelines.deprecated.vq_diffusion.pipeline_vq_diffusion.VQDiffusionPipeline.truncate
    def truncate(self, log_p_x_0: torch.Tensor, truncation_rate: float) -> torch.Tensor:
        """
        Truncates `log_p_x_0` such that for each column vector, the total cumulative probability is `truncation_rate`
        The lowest probabilities that would increase the cumulative probability above `truncation_rate` are set to
        zero.
        """
        sorted_log_p_x_0, indices = torch.sort(log_p_x_0, 1, descending=True)
        sorted_p_x_0 = torch.exp(sorted_log_p_x_0)
        keep_mask = sorted_p_x_0.cumsum(dim=1) < truncation_rate

        # Ensure that at least the largest probability is not zeroed out
        all_true = torch.full_like(keep_mask[:, 0:1, :], True)
        keep_mask = torch.cat((all_true, keep_mask), dim=1)
        keep_mask = keep_mask[:, :-1, :]

        keep_mask = keep_mask.gather(1, indices.argsort(1))

        rv = log_p_x_0.clone()

        rv[~keep_mask] = -torch.inf  # -inf = log(0)

        return rv

    def decode_quantized(self, latents: torch.Tensor, gray_features: list[torch.Tensor] | None) -> torch.Tensor:
        """The (luminance-aware) KL decoder on a latent: Eq. 5 adds grayscale features before every up block."""
        sample = latents if self.post_quant_conv is None else self.post_quant_conv(latents)
        decoder = self.decoder
        sample = decoder.conv_in(sample)
        sample = self._run(decoder.mid_block, sample)
        for i, up_block in enumerate(decoder.up_blocks):
            if gray_features is not None:
                sample = sample + self.gray_injections[i](gray_features[self._levels[i]])
            sample = self._run(up_block, sample)
        return decoder.conv_out(decoder.conv_act(decoder.conv_norm_out(sample)))

    # ------------------------------------------------------------------------------------------- decoding

    def forward(
        self,
        latents: torch.Tensor,
        gray: torch.Tensor | None = None,
        encoder_hidden_states: torch.Tensor | None = None,
        vq_steps: int | None = None,
        temperature: float = 1.0,
        generator: torch.Generator | list[torch.Generator] | None = None,
        return_dict: bool = True,
        truncation_rate: float | None = None,
    ) -> DecoderOutput | tuple[torch.Tensor]:
        if self.gray_encoder is not None:
            expected = (
                latents.shape[0],
                1,
                latents.shape[2] * self.scale_factor,
                latents.shape[3] * self.scale_factor,
            )
            if gray is None or tuple(gray.shape) != expected:
                got = None if gray is None else tuple(gray.shape)
                raise ValueError(f"LuminanceDecoder needs a grayscale image of shape {expected}, got {got}")
        steps = self.config.vq_inference_steps if vq_steps is None else vq_steps
        if self.refiner is None:
            steps = 0
        elif not 0 <= steps <= self.config.vq_num_train_timesteps:
            raise ValueError(f"vq_steps must be in [0, {self.config.vq_num_train_timesteps}], got {steps}")
        truncation_rate = self.config.vq_truncation_rate if truncation_rate is None else truncation_rate
        if not 0 < truncation_rate <= 1:
            raise ValueError(f"truncation_rate must be in (0, 1], got {truncation_rate}")
        per_example = self.use_slicing or (isinstance(generator, list) and steps > 0)
        if per_example and latents.shape[0] > 1:
            count = latents.shape[0]
            grays = gray.split(1) if gray is not None else [None] * count
            texts = encoder_hidden_states.split(1) if encoder_hidden_states is not None else [None] * count
            generators = generator if isinstance(generator, list) else [generator] * count
            sample = torch.cat(
                [
                    self._decode(*example, steps, temperature, truncation_rate)
                    for example in zip(latents.split(1), grays, texts, generators)
                ]
            )
        else:
            generator = generator[0] if isinstance(generator, list) else generator
            sample = self._decode(latents, gray, encoder_hidden_states, generator, steps, temperature, truncation_rate)
        if not return_dict:
            return (sample,)
        return DecoderOutput(sample=sample)

    def _decode(self, latents, gray, encoder_hidden_states, generator, steps, temperature, truncation_rate):
        gray_features = None if self.gray_encoder is None else self.encode_gray(gray.to(latents.dtype))
        if self.quantizer is not None:
            quantized = self.quantize(latents)
            latents = quantized.latents
            if steps > 0:
                tokens = self.refine(
                    quantized.tokens,
                    gray_features,
                    encoder_hidden_states,
                    steps,
                    temperature,
                    generator,
                    truncation_rate,
                )
                latents = self.quantizer.get_codebook_entry(tokens.flatten(), (*tokens.shape, latents.shape[1]))
        return self.decode_quantized(latents, gray_features)
