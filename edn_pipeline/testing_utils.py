"""Tiny EDN components for tests and benchmarks, built locally (no network), as diffusers' own tests do."""

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from tokenizers import pre_tokenizers
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from .ccd import CCDModel
from .luminance_decoder import LuminanceDecoder

# The toy VQ-Diffusion stage of ``tiny_components(vq_decoder=True)``: 32 codes, 10 mask-and-replace steps, 4 used.
TINY_VQ_OPTIONS = dict(
    use_quantizer=True,
    codebook_size=32,
    use_refiner=True,
    refiner_dim=16,
    refiner_layers=1,
    refiner_heads=2,
    refiner_cross_attention_dim=16,
    vq_num_train_timesteps=10,
    vq_inference_steps=4,
)


def tiny_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges: every character is a token."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for char in alphabet:
        vocab[char] = len(vocab)
        vocab[char + "</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=16)


def tiny_components(
    seed: int = 0, sample_size: int = 16, channels: tuple[int, int] = (8, 16), vq_decoder: bool = False
) -> dict:
    """The seven EDN components at toy size: a factor-2 VAE, so ``2 * sample_size`` pixels working resolution.

    The adapter and the grayscale injection get random (not zero) outputs, as after training, so they act.
    ``vq_decoder`` adds the quantiser and token refiner (``TINY_VQ_OPTIONS``).
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=channels,
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16,
        attention_head_dim=2,
        norm_num_groups=4,
    )
    vae = AutoencoderKL(
        block_out_channels=channels,
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
        )
    ).eval()
    ccd = CCDModel.from_unet(unet, vae_scale_factor=2)
    for module in [*ccd.controlnet_down_blocks, ccd.controlnet_mid_block, ccd.controlnet_cond_embedding.conv_out]:
        torch.nn.init.normal_(module.weight, std=0.2)
    decoder = LuminanceDecoder.from_vae(vae, **(TINY_VQ_OPTIONS if vq_decoder else {}))
    for conv in decoder.gray_injections:
        torch.nn.init.normal_(conv.weight, std=0.2)
    scheduler = DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
    return dict(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        ccd=ccd,
        decoder=decoder,
        scheduler=scheduler,
    )


def tiny_stable_diffusion(parts: dict) -> StableDiffusionPipeline:
    """A plain Stable Diffusion pipeline of ``tiny_components``' SD parts (what EDN starts from), no safety checker."""
    return StableDiffusionPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        scheduler=parts["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
