"""The discrete-diffusion token refiner of EDN's decoder (paper §1.3, VQ-Diffusion's mask-and-replace).

The colour latent, quantised to codebook tokens, carries the errors the CCD stage made. The refiner re-noises
the tokens partway with the mask-and-replace process and denoises them again, conditioned on the grayscale
image and the prompt, so that wrong tokens are replaced by ones consistent with the photo (the paper credits
this with less error accumulation and colour bleeding). It predicts log p(x_0 | x_t) over the K codebook
classes, the quantity diffusers' ``VQDiffusionScheduler`` samples from.

Unlike diffusers' discrete ``Transformer2DModel``, whose positional embedding fixes the token grid's size,
positions here come from a depthwise convolution over the grid, so any working size (any aspect) works.
"""

import torch
from diffusers.models.attention import BasicTransformerBlock
from torch import nn


class TokenRefiner(nn.Module):
    """Transformer over a token grid: x_t, timestep, grayscale features and text → log p(x_0 | x_t)."""

    def __init__(
        self,
        codebook_size: int,
        num_timesteps: int,
        gray_channels: int,
        cross_attention_dim: int,
        dim: int = 256,
        num_layers: int = 4,
        num_heads: int = 4,
    ):
        super().__init__()
        self.codebook_size = codebook_size
        self.token_embedding = nn.Embedding(codebook_size + 1, dim)  # the last class is [MASK]
        self.gray_projection = nn.Conv2d(gray_channels, dim, 1)
        self.position = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        # Added before every block; diffusers' AdaLayerNorm would need one timestep for the whole batch.
        self.time_embedding = nn.Embedding(num_timesteps, dim)
        self.blocks = nn.ModuleList(
            BasicTransformerBlock(
                dim, num_heads, dim // num_heads, cross_attention_dim=cross_attention_dim, attention_bias=True
            )
            for _ in range(num_layers)
        )
        self.norm_out = nn.LayerNorm(dim)
        self.to_logits = nn.Linear(dim, codebook_size)
        self.gradient_checkpointing = False

    def forward(
        self,
        tokens: torch.LongTensor,
        timestep: torch.LongTensor,
        gray_features: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """``tokens`` (B, h, w), ``timestep`` (B,), ``gray_features`` (B, C, h, w), text (B, L, D).

        Returns log-probabilities (B, K, h·w) over the codebook, computed in float32; ``temperature`` divides
        the logits first (higher: more diverse colours).
        """
        batch, height, width = tokens.shape
        hidden = self.token_embedding(tokens).permute(0, 3, 1, 2) + self.gray_projection(gray_features)
        hidden = hidden + self.position(hidden)
        hidden = hidden.flatten(2).transpose(1, 2)
        time = self.time_embedding(timestep)[:, None, :]
        for block in self.blocks:
            if torch.is_grad_enabled() and self.gradient_checkpointing:
                hidden = self._gradient_checkpointing_func(block, hidden + time, None, encoder_hidden_states)
            else:
                hidden = block(hidden + time, encoder_hidden_states=encoder_hidden_states)
        logits = self.to_logits(self.norm_out(hidden)).float() / temperature
        return torch.log_softmax(logits, dim=-1).transpose(1, 2)
