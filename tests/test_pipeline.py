"""EDNPipeline end to end with tiny components: inputs, lightness, hints, batches, outputs, save/load."""

import io

import numpy as np
import PIL.Image
import pytest
import torch
from conftest import seeded
from diffusers import (
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)
from skimage.color import rgb2lab

from edn_pipeline import CCDModel, EDNInputError, EDNPipeline, EDNPipelineOutput, LuminanceDecoder
from edn_pipeline.testing_utils import tiny_components, tiny_stable_diffusion

STEPS = 2


def lightness_of(rgb_uint8: np.ndarray) -> np.ndarray:
    """Independent reference: CIE L* of an 8-bit sRGB image (or gray image, as neutral sRGB)."""
    rgb = rgb_uint8 if rgb_uint8.ndim == 3 else np.repeat(rgb_uint8[..., None], 3, axis=2)
    return rgb2lab(rgb[..., :3] / 255.0)[..., 0]


def run(pipe, image, **kwargs):
    kwargs.setdefault("num_inference_steps", STEPS)
    kwargs.setdefault("generator", seeded(0))
    return pipe(image, **kwargs).images


def input_variants(photo):
    rgb = PIL.Image.fromarray(photo)
    gray = rgb.convert("L")
    gray16 = PIL.Image.fromarray(np.array(gray).astype(np.uint16) * 257)
    rgba = rgb.convert("RGBA")
    palette = rgb.convert("P")
    cmyk = rgb.convert("CMYK")
    return {
        "RGB": (rgb, lightness_of(photo)),
        "L": (gray, lightness_of(np.array(gray))),
        "I;16": (gray16, lightness_of(np.array(gray))),
        "RGBA": (rgba, lightness_of(photo)),
        "P": (palette, lightness_of(np.array(palette.convert("RGB")))),
        "CMYK": (cmyk, lightness_of(np.array(cmyk.convert("RGB")))),
        "numpy uint8 HxW": (np.array(gray), lightness_of(np.array(gray))),
        "numpy float HxWx3": (photo / 255.0, lightness_of(photo)),
        "torch 3xHxW": (torch.from_numpy(photo).permute(2, 0, 1) / 255.0, lightness_of(photo)),
    }


@pytest.mark.parametrize(
    "kind", ["RGB", "L", "I;16", "RGBA", "P", "CMYK", "numpy uint8 HxW", "numpy float HxWx3", "torch 3xHxW"]
)
def test_output_has_input_size_and_input_lightness(pipe, photo, kind):
    image, expected_lightness = input_variants(photo)[kind]
    out = run(pipe, image)[0]
    assert isinstance(out, PIL.Image.Image) and out.mode == "RGB"
    assert out.size == (photo.shape[1], photo.shape[0])
    out_lightness = lightness_of(np.array(out))
    assert np.abs(out_lightness - expected_lightness).mean() < 0.5
    # and it is a colour image, not the gray input back
    assert np.abs(rgb2lab(np.array(out) / 255.0)[..., 1:]).mean() > 1.0


def test_exif_rotated_photo_is_colourised_upright(pipe, photo, tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = PIL.Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    PIL.Image.fromarray(photo).save(path, exif=exif, quality=95)
    out = run(pipe, PIL.Image.open(path))[0]
    assert out.size == (photo.shape[0], photo.shape[1])


def test_large_input_is_colourised_at_model_resolution_and_keeps_full_detail(pipe):
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, size=(150, 200), dtype=np.uint8)  # fine detail the model can't see at 32 px
    shapes = []

    def record(pipeline, step, t, tensors):
        shapes.append(tuple(tensors["latents"].shape))
        return {}

    out = run(pipe, big, callback_on_step_end=record)[0]
    assert pipe.resolution == 32
    assert shapes[0] == (1, 4, 12, 16)  # 32×24 working image, factor-2 VAE
    assert out.size == (200, 150)
    assert np.abs(lightness_of(np.array(out)) - lightness_of(big)).mean() < 0.5


def test_same_seed_same_output_and_batches_follow_prompts(pipe, photo):
    gray = PIL.Image.fromarray(photo).convert("L")
    first = run(pipe, [gray, gray], prompt=["a red car", "a blue sky"])
    second = run(pipe, [gray, gray], prompt=["a red car", "a blue sky"])
    assert len(first) == 2
    for a, b in zip(first, second):
        assert np.array_equal(np.array(a), np.array(b))
    other_seed = run(pipe, [gray, gray], prompt=["a red car", "a blue sky"], generator=seeded(1))
    assert not np.array_equal(np.array(first[0]), np.array(other_seed[0]))


def test_hints_reach_the_adapter_as_colour_and_mask(pipe, photo):
    conditions = []

    def record(pipeline, step, t, tensors):
        conditions.append(tensors["condition"])
        return {}

    plain = run(pipe, photo)[0]
    hinted = run(
        pipe,
        photo,
        hints=[(5, 5, "#ff0000"), (40, 30, (0, 0, 255), 3)],
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["condition"],
    )[0]
    condition = conditions[0][0]
    assert condition.shape[0] == 7
    mask = condition[6]
    assert mask.sum() > 0
    # the red hint's mask and colour sit at the top-left of the 32×28 working image
    ys, xs = torch.nonzero(mask, as_tuple=True)
    assert mask[5 * 28 // 40, 5 * 32 // 48] == 1
    red = condition[3:6, 5 * 28 // 40, 5 * 32 // 48]
    assert red[0] > red[1] and red[0] > red[2]
    assert not np.array_equal(np.array(plain), np.array(hinted))


def test_hint_guidance_adds_a_branch_without_the_hints_only_when_there_are_hints(pipe, photo):
    branches = []
    original = pipe.predict_noise

    def spy(latents, t, prompt_embeds, condition, **kwargs):
        branches.append(condition.chunk(condition.shape[0] // latents.shape[0]))
        return original(latents, t, prompt_embeds, condition, **kwargs)

    pipe.predict_noise = spy
    try:
        hints = [(5, 5, "#ff0000"), (40, 30, (0, 0, 255), 3)]
        guided = run(pipe, photo, hints=hints, hint_guidance_scale=3.0)[0]
        unhinted_guided = run(pipe, photo, hint_guidance_scale=3.0)[0]
    finally:
        del pipe.predict_noise
    # with hints: negative prompt, prompt, and the prompt again on the gray image alone
    negative, positive, without = branches[0]
    assert torch.equal(negative, positive) and positive[:, 6].sum() > 0
    assert torch.equal(without[:, :3], positive[:, :3]) and not without[:, 3:].any()
    assert len(branches[STEPS]) == 2  # without hints there is nothing to guide on: no third batch
    assert not np.array_equal(np.array(guided), np.array(run(pipe, photo, hints=hints)[0]))
    np.testing.assert_array_equal(np.array(unhinted_guided), np.array(run(pipe, photo)[0]))
    # scale 1 is off: bit for bit the unguided call
    np.testing.assert_array_equal(
        np.array(run(pipe, photo, hints=hints, hint_guidance_scale=1.0)[0]), np.array(run(pipe, photo, hints=hints)[0])
    )


def test_rgba_hint_image_hints_where_its_alpha_is(pipe, photo):
    """An RGBA hint image is read: its opaque pixels reach the adapter as seeds of their colour, and the output
    changes; a fully transparent one is no hint at all."""
    hint_image = np.zeros((photo.shape[0], photo.shape[1], 4), dtype=np.uint8)
    hint_image[10:14, 10:14] = (0, 200, 0, 255)
    seen = {}

    def record(pipeline, step, timestep, tensors):
        seen.setdefault("condition", tensors["condition"])
        return {}

    out = run(
        pipe,
        photo,
        hints=PIL.Image.fromarray(hint_image, "RGBA"),
        callback_on_step_end=record,
        callback_on_step_end_tensor_inputs=["condition"],
    )[0]
    assert out.size == (photo.shape[1], photo.shape[0])
    condition = seen["condition"][0]
    working_h, working_w = condition.shape[-2:]
    y, x = 12 * working_h // photo.shape[0], 12 * working_w // photo.shape[1]
    assert condition[6, y, x] == 1.0  # a seed
    green = condition[3:6, y, x]
    assert green[1] > green[0] and green[1] > green[2]
    assert not np.array_equal(np.array(out), np.array(run(pipe, photo)[0]))
    transparent = np.zeros_like(hint_image)
    np.testing.assert_array_equal(np.array(run(pipe, photo, hints=transparent)[0]), np.array(run(pipe, photo)[0]))


@pytest.mark.parametrize("output_type", ["np", "pt", "latent"])
def test_output_types(pipe, photo, output_type):
    out = pipe(photo, num_inference_steps=STEPS, generator=seeded(0), output_type=output_type)
    assert isinstance(out, EDNPipelineOutput)
    images = out.images
    h, w = photo.shape[:2]
    if output_type == "np":
        assert isinstance(images, np.ndarray) and images.shape == (1, h, w, 3)
    elif output_type == "pt":
        assert isinstance(images, torch.Tensor) and images.shape == (1, 3, h, w)
    else:
        assert images.shape == (1, 4, 14, 16)
    if output_type != "latent":
        assert float(images.min()) >= 0 and float(images.max()) <= 1
        pil = np.array(run(pipe, photo)[0]) / 255.0
        as_hwc = images[0] if output_type == "np" else images[0].permute(1, 2, 0).numpy()
        # the float output rounded, within a level where it lies a table step from a rounding boundary (8-bit
        # output is encoded by luminance's table of sRGB bytes)
        assert np.abs(as_hwc - pil).max() <= 1 / 255 + 1e-6 and (np.abs(as_hwc - pil) > 0.5 / 255 + 1e-6).mean() < 1e-3


def test_mixed_sizes_in_a_batch_come_back_at_their_own_sizes(pipe, photo):
    small = photo[:20, :30]
    out = pipe([photo, small], num_inference_steps=STEPS, generator=seeded(0), output_type="np").images
    assert [o.shape for o in out] == [photo.shape, small.shape]


def test_save_and_load_with_diffusers_own_loader_is_bit_identical(pipe, photo, tmp_path):
    pipe.save_pretrained(tmp_path)
    for component in ("ccd", "decoder", "unet", "vae"):
        assert (tmp_path / component / "diffusion_pytorch_model.safetensors").exists()
    assert (tmp_path / "text_encoder" / "model.safetensors").exists()
    loaded = DiffusionPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is EDNPipeline
    assert type(loaded.ccd) is CCDModel and type(loaded.decoder) is LuminanceDecoder
    hints = [(10, 12, "#3366cc")]
    a = pipe(photo, hints=hints, num_inference_steps=STEPS, generator=seeded(3), output_type="np").images
    b = loaded(photo, hints=hints, num_inference_steps=STEPS, generator=seeded(3), output_type="np").images
    assert np.array_equal(a, b)


@pytest.mark.parametrize("scheduler_cls", [EulerDiscreteScheduler, DPMSolverMultistepScheduler])
def test_any_diffusers_scheduler_can_be_swapped_in(pipe, photo, tmp_path, scheduler_cls):
    pipe.save_pretrained(tmp_path)
    loaded = EDNPipeline.from_pretrained(tmp_path, scheduler=scheduler_cls.from_config(pipe.scheduler.config))
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded.scheduler) is scheduler_cls
    out = run(loaded, photo)[0]
    assert np.abs(lightness_of(np.array(out)) - lightness_of(photo)).mean() < 0.5


def test_progress_bar_is_diffusers_tqdm(pipe, photo):
    stream = io.StringIO()
    pipe.set_progress_bar_config(disable=False, file=stream)
    run(pipe, photo, num_inference_steps=3)
    assert "3/3" in stream.getvalue()


def test_callback_on_step_end_sees_and_changes_latents(pipe, photo):
    steps = []

    def zero_latents(pipeline, step, t, tensors):
        steps.append(step)
        assert pipeline is pipe and pipeline.num_timesteps == 3
        return {"latents": torch.zeros_like(tensors["latents"])}

    plain = pipe(photo, num_inference_steps=3, generator=seeded(0), output_type="latent").images
    changed = pipe(
        photo, num_inference_steps=3, generator=seeded(0), output_type="latent", callback_on_step_end=zero_latents
    ).images
    assert steps == [0, 1, 2]
    assert torch.count_nonzero(changed) == 0 and torch.count_nonzero(plain) > 0


def test_strength_runs_the_last_part_of_the_schedule_from_the_noised_gray_latent(pipe, photo):
    """As diffusers' img2img: int(steps · strength) steps, starting at q(x_t | x_0 = the grayscale photo's latent)
    when there are no hints."""
    seen = {}

    def record(pipeline, step, t, tensors):
        seen.setdefault("timesteps", []).append(int(t))
        return {}

    pipe(photo, num_inference_steps=10, strength=0.3, generator=seeded(0), callback_on_step_end=record)
    pipe.scheduler.set_timesteps(10)
    assert seen["timesteps"] == pipe.scheduler.timesteps[-3:].tolist()

    inputs = pipe.image_processor.preprocess([photo], [None])
    gray, condition = inputs.gray, inputs.condition
    factor = pipe.vae_scale_factor
    noise = torch.randn(1, 4, gray.shape[2] // factor, gray.shape[3] // factor, generator=seeded(1))
    t = pipe.scheduler.timesteps[-3]
    alpha_bar = pipe.scheduler.alphas_cumprod[t]
    with torch.no_grad():
        gray_latent = pipe.vae.encode(gray.repeat(1, 3, 1, 1) * 2 - 1).latent_dist.mode()
        gray_latent = gray_latent * pipe.vae.config.scaling_factor
        started = pipe.noised_image_latents(pipe.hinted_photo(condition), noise, t[None])
    torch.testing.assert_close(started, alpha_bar.sqrt() * gray_latent + (1 - alpha_bar).sqrt() * noise)


def test_strength_starts_from_the_photo_coloured_by_its_hints(pipe, photo):
    """An image with hints starts from the propagated hint colours everywhere, one without from its gray."""
    gray = torch.full((2, 3, 2, 2), 0.5)
    hint = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(2, 3, 2, 2).clone()
    hint[1] = 0.0  # the second image has no hints: zero colours and zero confidence
    confidence = torch.tensor([[1.0, 0.0], [0.5, 0.0]]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    confidence[1] = 0.0
    started = EDNPipeline.hinted_photo(torch.cat([gray, hint, confidence], dim=1))
    torch.testing.assert_close(started[0], hint[0])
    torch.testing.assert_close(started[1], gray[1])


def test_default_strength_is_saved_with_the_pipeline_and_used_when_none_is_given(photo, tmp_path):
    EDNPipeline(**tiny_components(), default_strength=0.5).save_pretrained(tmp_path)
    loaded = EDNPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.default_strength == 0.5
    by_default = run(loaded, photo, num_inference_steps=4, output_type="np")
    explicit = run(loaded, photo, num_inference_steps=4, strength=0.5, output_type="np")
    np.testing.assert_array_equal(by_default, explicit)
    assert not np.array_equal(by_default, run(loaded, photo, num_inference_steps=4, strength=1.0, output_type="np"))


def test_strength_below_one_needs_a_vae(photo):
    pipe = EDNPipeline(**{**tiny_components(), "vae": None})
    with pytest.raises(EDNInputError, match="vae"):
        pipe(photo, num_inference_steps=4, strength=0.5)


def test_memory_helpers_are_diffusers_own(pipe):
    for name in (
        "enable_model_cpu_offload",
        "enable_sequential_cpu_offload",
        "enable_xformers_memory_efficient_attention",
    ):
        assert getattr(EDNPipeline, name) is getattr(DiffusionPipeline, name)
    offloaded = EDNPipeline.model_cpu_offload_seq.split("->")
    assert set(offloaded) <= set(pipe.components)


def bad_calls(photo):
    h, w = photo.shape[:2]
    return [
        (dict(image=np.zeros((0, 5), np.uint8)), "empty"),
        (dict(image=None), "NoneType"),
        (dict(image=photo, hints=[(w + 3, 2, "#ff0000")]), "outside"),
        (dict(image=photo, hints=[(2, 2, "#zzzzzz")]), "colour"),
        (dict(image=photo, hints=np.zeros((h + 1, w, 4), np.uint8)), "hint image"),
        (dict(image=photo, num_inference_steps=0), "num_inference_steps"),
        (dict(image=photo, guidance_scale=float("nan")), "guidance_scale"),
        (dict(image=photo, guidance_scale=-1.0), "guidance_scale"),
        (dict(image=photo, hint_guidance_scale=float("inf")), "hint_guidance_scale"),
        (dict(image=[photo, photo], prompt=["a", "b", "c"]), "mismatched batch lengths"),
        (dict(image=[photo, photo], hints=[None]), "mismatched batch lengths"),
        (dict(image=photo, generator=[seeded(0), seeded(1)]), "mismatched batch lengths"),
        (dict(image=photo, output_type="jpeg"), "output_type"),
        (dict(image=photo, callback_on_step_end_tensor_inputs=["noise"]), "callback_on_step_end_tensor_inputs"),
        (dict(image=photo, strength=0.0), "strength"),
        (dict(image=photo, strength=1.5), "strength"),
        (dict(image=photo, strength=0.2, num_inference_steps=2), "no step"),
        (dict(image=photo, strength=0.5, latents=torch.zeros(1, 4, 5, 6)), "latents"),
    ]


def test_bad_input_raises_a_named_error(pipe, photo):
    cases = bad_calls(photo)
    assert len(cases) >= 17
    for kwargs, message in cases:
        with pytest.raises(EDNInputError, match=message):
            pipe(**{"num_inference_steps": STEPS, **kwargs})


def test_unreadable_image_file_is_a_named_error(pipe, photo, tmp_path):
    path = tmp_path / "broken.png"
    PIL.Image.fromarray(photo).save(path)
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(EDNInputError, match="read"):
        pipe(PIL.Image.open(path), num_inference_steps=STEPS)


def test_from_stable_diffusion_builds_an_untrained_edn(tmp_path, photo):
    parts = tiny_components()
    sd = tiny_stable_diffusion(parts)
    sd.save_pretrained(tmp_path)
    pipe = EDNPipeline.from_stable_diffusion(str(tmp_path))
    names = {"vae", "text_encoder", "tokenizer", "unet", "ccd", "decoder", "scheduler", "hint_propagator"}
    assert set(pipe.components) == names | {"palette_prior"}
    assert pipe.hint_propagator is None  # an untrained model spreads hints with Levin et al.'s solve
    assert pipe.palette_prior is None  # ... and its colour words act through the text encoder alone
    assert torch.count_nonzero(pipe.ccd.controlnet_mid_block.weight) == 0
    assert all(torch.count_nonzero(conv.weight) == 0 for conv in pipe.decoder.gray_injections)
    latents = torch.randn(1, 4, 8, 8, generator=seeded(0))
    with torch.no_grad():
        expected = sd.vae.decode(latents).sample
        got = pipe.decoder(latents, torch.rand(1, 1, 16, 16)).sample
    assert torch.equal(got, expected)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(photo, hints=[(3, 3, "red")], num_inference_steps=STEPS, generator=seeded(0)).images[0]
    assert out.size == (photo.shape[1], photo.shape[0])
