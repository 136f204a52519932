"""Latent scaling for the UNet: SD's one factor, SD3's shift, and per channel as diffusers' SDXL pipelines read
``latents_mean`` / ``latents_std``."""

from types import SimpleNamespace

import torch

from edn_pipeline.latent_scale import scale_latents, unscale_latents

LATENTS = torch.arange(2 * 4 * 2 * 3, dtype=torch.float32).view(2, 4, 2, 3) / 7 - 1.5


def test_one_factor_is_stable_diffusions_scaling():
    config = SimpleNamespace(scaling_factor=0.18215)
    torch.testing.assert_close(scale_latents(LATENTS, config), LATENTS * 0.18215)
    config = SimpleNamespace(scaling_factor=1.5305, shift_factor=0.0609)  # SD3's VAE
    torch.testing.assert_close(scale_latents(LATENTS, config), (LATENTS - 0.0609) * 1.5305)


def test_per_channel_statistics_scale_each_channel_to_zero_mean_and_unit_variance():
    data = torch.randn(64, 4, 8, 8) * torch.tensor([0.25, 0.3, 0.26, 0.7]).view(1, 4, 1, 1)
    data = data + torch.tensor([-0.1, 0.3, -0.5, 2.0]).view(1, 4, 1, 1)
    channels = data.transpose(0, 1).flatten(1)
    config = SimpleNamespace(
        scaling_factor=1.0, latents_mean=channels.mean(1).tolist(), latents_std=channels.std(1).tolist()
    )
    scaled = scale_latents(data, config).transpose(0, 1).flatten(1)
    torch.testing.assert_close(scaled.mean(1), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(scaled.std(1), torch.ones(4), atol=1e-5, rtol=0)
    # the SDXL pipelines' formula, with a factor as Playground v2.5's VAE has
    config.scaling_factor = 0.5
    mean = torch.tensor(config.latents_mean).view(1, 4, 1, 1)
    std = torch.tensor(config.latents_std).view(1, 4, 1, 1)
    torch.testing.assert_close(scale_latents(data, config), (data - mean) * 0.5 / std)
    torch.testing.assert_close(unscale_latents(scale_latents(data, config), config), data, atol=1e-5, rtol=0)
