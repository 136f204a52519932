"""How the VAE's latents are scaled for the UNet: Stable Diffusion's one factor, or each channel to zero mean and
unit variance.

Per channel it follows diffusers' ``latents_mean`` / ``latents_std`` VAE configs (the SDXL pipelines read them for
Playground v2.5's VAE): ``(latents - mean) * scaling_factor / std``. edn-tiny needs it: its latent carries each
8×8 cell's CIE a*b* in two channels whose spread (0.25-0.31 after SD's one factor) is under half the fourth
channel's, and that channel sits near +2. A colour channel of std 0.28 keeps a signal-to-noise ratio above 1 for
only the first 73 of SD's 1,000 training timesteps (a unit-variance one for 354), and samples from pure noise miss
the fourth channel's offset (their mean ends at 0.2).
"""

from __future__ import annotations

import torch

__all__ = ["scale_latents", "unscale_latents"]


def _statistics(config, latents: torch.Tensor) -> tuple[torch.Tensor | float, torch.Tensor | float]:
    """The config's per-channel mean and std as (1, C, 1, 1) tensors, or SD3's shift and 1 without them."""
    mean, std = getattr(config, "latents_mean", None), getattr(config, "latents_std", None)
    if mean is None or std is None:
        return getattr(config, "shift_factor", None) or 0.0, 1.0
    shape = (1, -1, 1, 1)
    return (
        torch.tensor(mean, device=latents.device, dtype=latents.dtype).view(shape),
        torch.tensor(std, device=latents.device, dtype=latents.dtype).view(shape),
    )


def scale_latents(latents: torch.Tensor, config) -> torch.Tensor:
    """The VAE's latents (B, C, h, w) as the UNet sees them, by ``config`` (a VAE's or the decoder's)."""
    mean, std = _statistics(config, latents)
    return (latents - mean) * config.scaling_factor / std


def unscale_latents(latents: torch.Tensor, config) -> torch.Tensor:
    """The inverse of :func:`scale_latents`: the UNet's latents back in the decoder's units."""
    mean, std = _statistics(config, latents)
    return latents * std / config.scaling_factor + mean
