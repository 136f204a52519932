"""CCDModel and LuminanceDecoder: initialisation that leaves SD untouched, injection wiring, save/load."""

import os

import pytest
import torch
from diffusers import ControlNetModel

from edn_pipeline import CCDModel, LuminanceDecoder
from edn_pipeline.hints import CONDITION_CHANNELS
from edn_pipeline.testing_utils import tiny_components


@pytest.fixture
def parts():
    return tiny_components()


def test_untrained_decoder_decodes_exactly_as_the_sd_vae(parts):
    vae = parts["vae"]
    decoder = LuminanceDecoder.from_vae(vae)  # fresh: zero-initialised injections
    latents = torch.randn(2, 4, 8, 12, generator=torch.Generator().manual_seed(0))
    gray = torch.rand(2, 1, 16, 24, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        expected = vae.decode(latents).sample
        got = decoder(latents, gray).sample
    assert torch.equal(got, expected)


def test_gray_features_enter_every_up_block(parts):
    vae = parts["vae"]
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    gray = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    n_up_blocks = len(vae.decoder.up_blocks)
    decoder = LuminanceDecoder.from_vae(vae)
    assert len(decoder.gray_injections) == n_up_blocks
    with torch.no_grad():
        plain = decoder(latents, gray).sample
        for i in range(n_up_blocks):
            fresh = LuminanceDecoder.from_vae(vae)
            torch.nn.init.normal_(fresh.gray_injections[i].weight, std=0.5)
            changed = fresh(latents, gray).sample
            assert (changed - plain).abs().max() > 1e-3, f"up block {i} ignores the grayscale features"
            other_gray = fresh(latents, -gray).sample
            assert (changed - other_gray).abs().max() > 1e-3


def test_decoder_without_gray_encoder_needs_no_gray_and_matches_vae(parts):
    vae = parts["vae"]
    decoder = LuminanceDecoder.from_vae(vae, use_gray_encoder=False)
    assert decoder.gray_encoder is None
    latents = torch.randn(1, 4, 8, 8)
    with torch.no_grad():
        assert torch.equal(decoder(latents).sample, vae.decode(latents).sample)


def test_decoder_rejects_a_gray_image_of_the_wrong_size(parts):
    decoder = parts["decoder"]
    with pytest.raises(ValueError, match=r"grayscale image of shape \(1, 1, 16, 16\)"):
        decoder(torch.randn(1, 4, 8, 8), torch.zeros(1, 1, 8, 8))


def test_decoder_save_and_load_round_trip_in_safetensors(parts, tmp_path):
    decoder = parts["decoder"]
    decoder.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").exists()
    loaded = LuminanceDecoder.from_pretrained(tmp_path)
    latents, gray = torch.randn(1, 4, 8, 8), torch.rand(1, 1, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(latents, gray).sample, decoder(latents, gray).sample)


def test_ccd_starts_as_the_unet_encoder_with_zero_outputs(parts):
    unet = parts["unet"]
    ccd = CCDModel.from_unet(unet, vae_scale_factor=2)
    assert isinstance(ccd, ControlNetModel)
    assert ccd.config.conditioning_channels == CONDITION_CHANNELS
    for name, tensor in unet.down_blocks.state_dict().items():
        assert torch.equal(ccd.down_blocks.state_dict()[name], tensor)
    sample = torch.randn(1, 4, 8, 8)
    cond = torch.rand(1, CONDITION_CHANNELS, 16, 16)
    with torch.no_grad():
        down, mid = ccd(
            sample, 10, encoder_hidden_states=torch.randn(1, 4, 16), controlnet_cond=cond, return_dict=False
        )
    assert all(torch.count_nonzero(d) == 0 for d in down)
    assert torch.count_nonzero(mid) == 0


def test_ccd_save_and_load(parts, tmp_path):
    ccd = parts["ccd"]
    ccd.save_pretrained(tmp_path)
    assert os.path.exists(tmp_path / "diffusion_pytorch_model.safetensors")
    loaded = CCDModel.from_pretrained(tmp_path)
    assert type(loaded) is CCDModel
    for name, tensor in ccd.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor)


@pytest.mark.parametrize("factor, channels", [(8, (16, 32, 96, 256)), (2, (16, 32)), (16, (16, 32, 96, 256, 256))])
def test_ccd_condition_embedding_downsamples_by_the_vae_factor(parts, factor, channels):
    ccd = CCDModel.from_unet(parts["unet"], vae_scale_factor=factor)
    assert tuple(ccd.config.conditioning_embedding_out_channels) == channels
    with torch.no_grad():
        embedded = ccd.controlnet_cond_embedding(torch.rand(1, CONDITION_CHANNELS, 64, 64))
    assert embedded.shape[-1] == 64 // factor


def test_ccd_follows_the_unet_dtype(parts):
    unet = parts["unet"].to(torch.bfloat16)
    assert CCDModel.from_unet(unet, vae_scale_factor=2).dtype == torch.bfloat16
