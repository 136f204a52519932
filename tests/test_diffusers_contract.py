"""EDNPipeline keeps the contract diffusers' own pipeline test suite (PipelineTesterMixin) checks.

Each test states one behaviour that tools built around diffusers rely on; the tests are the project's own,
written from those behaviours.
"""

import inspect
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import seeded
from diffusers import DiffusionPipeline
from diffusers.utils.torch_utils import randn_tensor
from skimage.color import rgb2lab

from edn_pipeline import EDNPipeline, EDNPipelineOutput
from edn_pipeline.testing_utils import tiny_components

STEPS = 2
needs_accelerator = pytest.mark.skipif(
    not (torch.cuda.is_available() or (hasattr(torch, "xpu") and torch.xpu.is_available())),
    reason="offloading moves weights between an accelerator and the CPU (diffusers skips these on CPU too)",
)


def call(pipe, image, **kwargs):
    kwargs = {"num_inference_steps": STEPS, "generator": seeded(0), "output_type": "np", **kwargs}
    return pipe(image, **kwargs).images


def lightness(images: np.ndarray) -> np.ndarray:
    return rgb2lab(np.round(images * 255) / 255)[..., 0]


# ----------------------------------------------------------------------------------------------- call arguments


def test_num_images_per_prompt_gives_different_colourisations_with_the_input_lightness(pipe, photo):
    gray = photo.mean(axis=2).round().astype(np.uint8)
    out = call(pipe, [photo, gray], num_images_per_prompt=3)
    assert out.shape == (6, *photo.shape)
    assert not np.allclose(out[0], out[1]) and not np.allclose(out[1], out[2])
    expected = [rgb2lab(photo / 255.0)[..., 0], rgb2lab(np.repeat(gray[..., None], 3, 2) / 255.0)[..., 0]]
    for i, image in enumerate(out):
        assert np.abs(lightness(image) - expected[i // 3]).mean() < 0.5


def test_given_latents_equal_the_generators_draw(pipe, photo):
    shape = (1, 4, 14, 16)  # 32×28 working image, factor-2 VAE
    latents = randn_tensor(shape, generator=seeded(7), dtype=torch.float32)
    from_generator = call(pipe, photo, generator=seeded(7))
    from_latents = call(pipe, photo, generator=None, latents=latents)
    np.testing.assert_array_equal(from_generator, from_latents)


def test_prompt_embeddings_replace_text(pipe, photo):
    embeds, negative = pipe.encode_prompt("a red car", "cpu", 1, True, negative_prompt="gray")
    from_text = call(pipe, photo, prompt="a red car", negative_prompt="gray")
    from_embeds = call(pipe, photo, prompt_embeds=embeds, negative_prompt_embeds=negative)
    np.testing.assert_array_equal(from_text, from_embeds)


def test_latent_output_is_the_colour_latent_before_decoding(pipe, photo):
    latents = call(pipe, photo, output_type="latent")
    decoded = call(pipe, photo)
    assert latents.shape == (1, 4, 14, 16)
    gray = pipe.image_processor.preprocess([photo], [None]).gray
    lightness = torch.from_numpy(rgb2lab(photo / 255.0)[..., 0].astype(np.float32))
    with torch.no_grad():
        by_hand = pipe.image_processor.postprocess(pipe.decode_latents(latents, gray), [lightness], "np")
    np.testing.assert_allclose(by_hand, decoded, atol=1e-4)


def test_return_dict_false_gives_the_same_images_as_a_tuple(pipe, photo):
    as_dataclass = pipe(photo, num_inference_steps=STEPS, generator=seeded(0), output_type="np")
    as_tuple = pipe(photo, num_inference_steps=STEPS, generator=seeded(0), output_type="np", return_dict=False)
    assert isinstance(as_dataclass, EDNPipelineOutput) and isinstance(as_tuple, tuple)
    np.testing.assert_array_equal(as_tuple[0], as_dataclass.images)


def test_call_signature_documents_its_arguments():
    parameters = set(inspect.signature(EDNPipeline.__call__).parameters) - {"self"}
    doc = EDNPipeline.__call__.__doc__
    missing = [name for name in parameters if name not in doc]
    assert not missing, f"undocumented call arguments: {missing}"


# ----------------------------------------------------------------------------------------------- prompt and state


def test_encode_prompt_alone_gives_the_embeddings_the_call_uses(pipe, photo):
    seen = {}

    def keep(pipeline, step, t, tensors):
        seen.update(tensors)
        return {}

    call(
        pipe,
        photo,
        prompt="blue sky",
        negative_prompt="sepia",
        callback_on_step_end=keep,
        callback_on_step_end_tensor_inputs=["prompt_embeds", "negative_prompt_embeds"],
    )
    embeds, negative = pipe.encode_prompt("blue sky", "cpu", 1, True, negative_prompt="sepia")
    torch.testing.assert_close(seen["prompt_embeds"], embeds, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(seen["negative_prompt_embeds"], negative, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("guidance, guided", [(5.0, True), (1.0, False), (0.0, False)])
def test_guidance_properties(pipe, photo, guidance, guided):
    seen = []

    def keep(pipeline, step, t, tensors):
        seen.append((pipeline.guidance_scale, pipeline.do_classifier_free_guidance, pipeline.num_timesteps))
        return {}

    call(pipe, photo, guidance_scale=guidance, num_inference_steps=3, callback_on_step_end=keep)
    assert seen == [(guidance, guided, 3)] * 3


def test_guidance_changes_the_result(pipe, photo):
    assert not np.allclose(call(pipe, photo, guidance_scale=1.0), call(pipe, photo, guidance_scale=7.0))


def test_callback_receives_every_declared_tensor_and_can_change_prompt_embeds(pipe, photo):
    names = EDNPipeline._callback_tensor_inputs
    received = []

    def check(pipeline, step, t, tensors):
        received.append(sorted(tensors))
        return {}

    call(pipe, photo, callback_on_step_end=check, callback_on_step_end_tensor_inputs=names)
    assert received == [sorted(names)] * STEPS

    def scramble(pipeline, step, t, tensors):
        return {"prompt_embeds": tensors["prompt_embeds"] * 3}

    plain = call(pipe, photo)
    changed = call(pipe, photo, callback_on_step_end=scramble, callback_on_step_end_tensor_inputs=["prompt_embeds"])
    assert not np.allclose(plain, changed)


# ----------------------------------------------------------------------------------------------- batches


def test_a_batch_equals_single_calls_with_the_same_generators(pipe, photo):
    images = [photo, photo[:, ::-1].copy(), np.ascontiguousarray(photo[::-1])]
    prompts = ["a red car", "a green field", "a blue sea"]
    batch = call(pipe, images, prompt=prompts, generator=[seeded(i) for i in range(3)])
    for i in range(3):
        single = call(pipe, images[i], prompt=prompts[i], generator=seeded(i))
        # Batched float noise can move a gamut-clipped pixel by one bisection step (2**-12): a quarter of 1/255.
        np.testing.assert_allclose(batch[i], single[0], atol=1e-3)


def test_one_image_with_a_list_of_prompts_and_one_prompt_with_a_list_of_images(pipe, photo):
    by_prompts = call(pipe, photo, prompt=["a red car", "a blue car"], generator=[seeded(0), seeded(1)])
    assert by_prompts.shape == (2, *photo.shape)
    np.testing.assert_allclose(
        by_prompts[1], call(pipe, photo, prompt="a blue car", generator=seeded(1))[0], atol=1e-4
    )
    by_images = call(pipe, [photo, photo[::-1].copy()], prompt="a red car", generator=[seeded(0), seeded(1)])
    assert by_images.shape == (2, *photo.shape)
    np.testing.assert_allclose(
        by_images[1], call(pipe, photo[::-1].copy(), prompt="a red car", generator=seeded(1))[0], atol=1e-4
    )


# ----------------------------------------------------------------------------------------------- saving and loading


def test_optional_vae_set_to_none_survives_a_round_trip(photo, tmp_path):
    parts = tiny_components()
    with_vae = EDNPipeline(**parts)
    without_vae = EDNPipeline(**{**parts, "vae": None})
    for p in (with_vae, without_vae):
        p.set_progress_bar_config(disable=True)
    without_vae.save_pretrained(tmp_path)
    loaded = EDNPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert loaded.vae is None and "vae" in loaded.components
    np.testing.assert_array_equal(call(loaded, photo), call(with_vae, photo))


def test_fp16_variant_saves_and_loads_and_a_missing_variant_is_diffusers_error(pipe, tmp_path):
    pipe.save_pretrained(tmp_path / "variant", variant="fp16")
    for name in ("ccd", "decoder", "unet", "vae"):
        files = [p.name for p in (tmp_path / "variant" / name).iterdir()]
        assert any(".fp16." in f for f in files), (name, files)
    loaded = EDNPipeline.from_pretrained(tmp_path / "variant", variant="fp16")
    for name, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            for key, value in module.state_dict().items():
                assert torch.equal(loaded.components[name].state_dict()[key], value), (name, key)

    pipe.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="You are trying to load the model files of the `variant=fp16`"):
        EDNPipeline.from_pretrained(tmp_path / "plain", variant="fp16")


def test_dtype_as_one_dtype_or_per_component(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    half = EDNPipeline.from_pretrained(tmp_path, dtype=torch.float16)
    mixed = EDNPipeline.from_pretrained(tmp_path, dtype={"ccd": torch.bfloat16, "default": torch.float16})
    for name, module in half.components.items():
        if isinstance(module, torch.nn.Module):
            assert module.dtype == torch.float16, name
            expected = torch.bfloat16 if name == "ccd" else torch.float16
            assert mixed.components[name].dtype == expected, name


def test_pipe_to_dtype_moves_every_model_and_the_pipeline_still_runs(pipe, photo):
    pipe.to(torch.bfloat16)
    assert all(m.dtype == torch.bfloat16 for m in pipe.components.values() if isinstance(m, torch.nn.Module))
    out = call(pipe, photo)
    assert out.dtype == np.float32 and np.isfinite(out).all()
    assert np.abs(lightness(out[0]) - rgb2lab(photo / 255.0)[..., 0]).mean() < 0.5


def test_device_map_loading_gives_the_same_output(pipe, photo, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = EDNPipeline.from_pretrained(tmp_path, device_map="cpu")
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_allclose(call(loaded, photo), call(pipe, photo), atol=1e-4)


def test_components_hold_exactly_what_the_constructor_takes(pipe):
    # as diffusers' own check: the constructor's plain-number options are config, not components
    constructor = set(inspect.signature(EDNPipeline.__init__).parameters) - {"self", "default_strength"}
    assert set(pipe.components) == constructor
    rebuilt = EDNPipeline(**pipe.components)
    assert all(rebuilt.components[k] is v for k, v in pipe.components.items())


def test_diffusers_loader_returns_the_edn_class(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    assert type(DiffusionPipeline.from_pretrained(tmp_path)) is EDNPipeline


# ----------------------------------------------------------------------------------------------- memory helpers


def test_attention_slicing_gives_the_same_output(pipe, photo):
    plain = call(pipe, photo)
    pipe.enable_attention_slicing(slice_size=1)
    np.testing.assert_allclose(call(pipe, photo), plain, atol=1e-4)


def test_vae_slicing_decodes_a_batch_of_16_one_image_at_a_time(pipe, photo):
    batch_sizes = []
    hook = pipe.decoder.decoder.conv_in.register_forward_pre_hook(
        lambda module, args: batch_sizes.append(args[0].shape[0])
    )

    def kwargs():
        return dict(prompt=["colored photo"] * 16, generator=[seeded(i) for i in range(16)], num_inference_steps=1)

    plain = call(pipe, photo, **kwargs())
    assert batch_sizes == [16]
    batch_sizes.clear()
    pipe.enable_vae_slicing()
    sliced = call(pipe, photo, **kwargs())
    hook.remove()
    assert batch_sizes == [1] * 16
    np.testing.assert_allclose(sliced, plain, atol=1e-4)


def test_vae_tiling_is_refused_with_a_reason(pipe):
    with pytest.raises(NotImplementedError, match="working resolution"):
        pipe.enable_vae_tiling()


def test_layerwise_casting_of_the_unet_runs(pipe, photo):
    pipe.to(torch.bfloat16)
    pipe.unet.enable_layerwise_casting(storage_dtype=torch.float8_e4m3fn, compute_dtype=torch.bfloat16)
    out = call(pipe, photo)
    assert np.isfinite(out).all() and out.shape == (1, *photo.shape)


def test_memory_helpers_are_diffusers_own():
    for name in (
        "enable_model_cpu_offload",
        "enable_sequential_cpu_offload",
        "enable_group_offload",
        "enable_attention_slicing",
        "enable_xformers_memory_efficient_attention",
    ):
        assert getattr(EDNPipeline, name) is getattr(DiffusionPipeline, name), name


@needs_accelerator
@pytest.mark.parametrize("helper", ["enable_model_cpu_offload", "enable_sequential_cpu_offload"])
def test_cpu_offload_gives_the_same_output(pipe, photo, helper):
    device = "cuda" if torch.cuda.is_available() else "xpu"
    plain = call(pipe.to(device), photo)
    getattr(pipe, helper)(device=device)
    np.testing.assert_allclose(call(pipe, photo), plain, atol=1e-4)
    np.testing.assert_allclose(call(pipe, photo), plain, atol=1e-4)  # and again, after the hooks reset


@needs_accelerator
def test_group_offloading_gives_the_same_output(pipe, photo):
    device = torch.device("cuda" if torch.cuda.is_available() else "xpu")
    plain = call(pipe.to(device), photo)
    pipe.to("cpu")
    pipe.enable_group_offload(device, offload_type="block_level", num_blocks_per_group=1)
    np.testing.assert_allclose(call(pipe, photo), plain, atol=1e-4)


@pytest.mark.parametrize(
    "first_import",
    [
        "from edn_pipeline.ccd import CCDModel",
        "from edn_pipeline.luminance_decoder import LuminanceDecoder",
        "from edn_pipeline.image_processor import EDNImageProcessor",
    ],
)
def test_any_module_may_be_imported_first_and_diffusers_still_finds_the_pipeline(first_import):
    """A module that imports diffusers must not pull the pipeline in while it is itself half-imported."""
    code = f"{first_import}\nimport diffusers\nprint(diffusers.EDNPipeline.__name__)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "EDNPipeline"
