"""CCD is wired into the UNet exactly as diffusers wires a ControlNet."""

import torch
from conftest import seeded
from diffusers import ControlNetModel, StableDiffusionControlNetPipeline

from edn_pipeline import EDNPipeline
from edn_pipeline.testing_utils import tiny_components


def as_controlnet(ccd) -> ControlNetModel:
    controlnet = ControlNetModel.from_config(ccd.config)
    controlnet.load_state_dict(ccd.state_dict())
    return controlnet


def test_denoising_step_equals_controlnet_plus_unet():
    parts = tiny_components()
    pipe = EDNPipeline(**parts)
    controlnet, unet = as_controlnet(parts["ccd"]), parts["unet"]
    latents = torch.randn(2, 4, 16, 16, generator=seeded(0))
    embeds = torch.randn(4, 16, 16, generator=seeded(1))  # negative + positive, batch 2
    condition = torch.rand(4, 7, 32, 32, generator=seeded(2))
    t = torch.tensor(500)

    with torch.no_grad():
        ours = pipe.predict_noise(latents, t, embeds, condition, guidance_scale=5.0)
        # StableDiffusionControlNetPipeline's step, written out
        model_input = torch.cat([latents] * 2)
        down, mid = controlnet(
            model_input,
            t,
            encoder_hidden_states=embeds,
            controlnet_cond=condition,
            conditioning_scale=1.0,
            guess_mode=False,
            return_dict=False,
        )
        noise = unet(
            model_input,
            t,
            encoder_hidden_states=embeds,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
        uncond, text = noise.chunk(2)
        theirs = uncond + 5.0 * (text - uncond)
    assert torch.equal(ours, theirs)


def test_hint_guidance_moves_the_step_away_from_the_hint_free_prediction():
    pipe = EDNPipeline(**tiny_components())
    latents = torch.randn(1, 4, 16, 16, generator=seeded(0))
    negative, positive = torch.randn(2, 16, 16, generator=seeded(1)).chunk(2)
    hinted = torch.rand(1, 7, 32, 32, generator=seeded(2))
    gray_only = torch.cat([hinted[:, :3], torch.zeros(1, 4, 32, 32)], dim=1)
    t = torch.tensor(500)
    with torch.no_grad():
        ours = pipe.predict_noise(
            latents,
            t,
            torch.cat([negative, positive, positive]),
            torch.cat([hinted, hinted, gray_only]),
            guidance_scale=5.0,
            hint_guidance_scale=2.5,
        )
        # each branch alone, and the two guidances written out
        uncond, text, text_without_hints = (
            pipe.predict_noise(latents, t, embeds, condition)
            for embeds, condition in ((negative, hinted), (positive, hinted), (positive, gray_only))
        )
        theirs = uncond + 5.0 * (text - uncond) + 1.5 * (text - text_without_hints)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    assert (text - text_without_hints).abs().mean() > 1e-3  # the hints do move this adapter's prediction


def test_whole_denoising_loop_matches_diffusers_controlnet_pipeline():
    parts = tiny_components()
    edn = EDNPipeline(**parts)
    edn.set_progress_bar_config(disable=True)
    controlnet_pipe = StableDiffusionControlNetPipeline(
        vae=parts["vae"],
        text_encoder=parts["text_encoder"],
        tokenizer=parts["tokenizer"],
        unet=parts["unet"],
        controlnet=as_controlnet(parts["ccd"]),
        scheduler=parts["scheduler"],
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    controlnet_pipe.set_progress_bar_config(disable=True)
    gray = torch.rand(32, 32, generator=seeded(5))
    conditions = []

    def keep_condition(pipeline, step, t, tensors):
        conditions.append(tensors["condition"])
        return {}

    ours = edn(
        gray,
        prompt="a red barn",
        num_inference_steps=3,
        guidance_scale=5.0,
        generator=seeded(0),
        output_type="latent",
        callback_on_step_end=keep_condition,
        callback_on_step_end_tensor_inputs=["condition"],
    ).images
    theirs = controlnet_pipe(
        prompt="a red barn",
        image=conditions[0],
        num_inference_steps=3,
        guidance_scale=5.0,
        generator=seeded(0),
        output_type="latent",
    ).images
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
