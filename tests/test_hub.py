"""Hub-native distribution: an exported repo loads with plain diffusers, and ControlNets start a CCD."""

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from conftest import seeded
from diffusers import ControlNetModel, DiffusionPipeline
from huggingface_hub import ModelCard

from edn_pipeline import CCDModel, EDNPipeline, HintPropagator, PalettePrior
from edn_pipeline.commands.edn_cli import main
from edn_pipeline.testing_utils import tiny_components, tiny_stable_diffusion
from edn_pipeline.training.model_card import render_model_card

# a hint (the propagator spreads it) and colour words without hints (the palette prior places them)
CALLS = [(None, [(5, 5, "#d02020")]), ("a photo, mostly blue", None)]
LOAD_WITHOUT_PACKAGE = textwrap.dedent(
    f"""
    import sys
    sys.modules["edn_pipeline"] = None  # the package is not importable here
    import numpy as np, torch
    from diffusers import DiffusionPipeline
    pipe = DiffusionPipeline.from_pretrained(sys.argv[1], trust_remote_code=True)
    pipe.set_progress_bar_config(disable=True)
    assert "edn_pipeline" not in type(pipe).__module__, type(pipe).__module__
    image = np.load(sys.argv[2])
    CALLS = {CALLS!r}
    out = [
        pipe(image, prompt=prompt, hints=hints, num_inference_steps=2, generator=torch.Generator().manual_seed(0),
             output_type="np").images
        for prompt, hints in CALLS
    ]
    np.save(sys.argv[3], np.stack(out))
    """
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("hub")
    propagator = HintPropagator(channels=8, embedding_dim=4, dilations=(1, 2))
    prior = PalettePrior(channels=8, dilations=(1, 2))
    EDNPipeline(**tiny_components(vq_decoder=True), hint_propagator=propagator, palette_prior=prior).save_pretrained(
        root / "model"
    )
    assert main(["export-hub", str(root / "model"), str(root / "repo")]) == 0
    return root


@pytest.mark.slow
def test_exported_repo_loads_with_plain_diffusers_and_gives_identical_output(exported, photo):
    np.save(exported / "photo.npy", photo)
    script = exported / "load.py"
    script.write_text(LOAD_WITHOUT_PACKAGE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(exported / "modules")}
    result = subprocess.run(
        [sys.executable, str(script), str(exported / "repo"), str(exported / "photo.npy"), str(exported / "out.npy")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    pipe = EDNPipeline.from_pretrained(exported / "model")
    pipe.set_progress_bar_config(disable=True)
    ours = [
        pipe(photo, prompt=prompt, hints=hints, num_inference_steps=2, generator=seeded(0), output_type="np").images
        for prompt, hints in CALLS
    ]
    np.testing.assert_array_equal(np.load(exported / "out.npy"), np.stack(ours))


def test_an_export_without_a_training_card_gets_one(exported):
    card = ModelCard.load(exported / "repo" / "README.md")
    assert card.data.library_name == "diffusers" and "trust_remote_code=True" in card.text


def test_exported_index_names_the_custom_code(exported):
    index = json.loads((exported / "repo" / "model_index.json").read_text())
    assert index["_class_name"] == ["edn_remote_pipeline_edn", "EDNPipeline"]
    assert index["ccd"] == ["edn_remote_ccd", "CCDModel"]
    assert index["decoder"] == ["edn_remote_luminance_decoder", "LuminanceDecoder"]
    assert index["hint_propagator"] == ["edn_remote_hint_propagator", "HintPropagator"]
    assert index["palette_prior"] == ["edn_remote_palette_prior", "PalettePrior"]
    for folder, entry in (
        (".", "edn_remote_pipeline_edn.py"),
        ("ccd", "edn_remote_ccd.py"),
        ("decoder", "edn_remote_luminance_decoder.py"),
        ("hint_propagator", "edn_remote_hint_propagator.py"),
        ("palette_prior", "edn_remote_palette_prior.py"),
    ):
        assert (exported / "repo" / folder / entry).is_file()


def test_without_trust_remote_code_diffusers_refuses_with_its_own_message(exported):
    with pytest.raises(ValueError, match="trust_remote_code=True"):
        DiffusionPipeline.from_pretrained(exported / "repo")


def test_export_of_a_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert main(["export-hub", str(tmp_path / "nope"), str(tmp_path / "out")]) == 2
    assert "edn: " in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_model_card_metadata_is_what_the_hub_reads():
    card = render_model_card(
        repo_id="someone/edn-test",
        base_model="CompVis/stable-diffusion-v1-4",
        stage="ccd",
        training_data="four photos",
        hyperparameters={"learning_rate": 1e-5},
        steps=10,
        hardware="CPU",
        evaluation="| metric | value |\n|---|---|\n| PSNR | 20.1 |",
    )
    parsed = ModelCard(str(card))  # the YAML front matter round-trips through huggingface_hub
    metadata = parsed.data.to_dict()
    assert metadata["library_name"] == "diffusers" and metadata["pipeline_tag"] == "image-to-image"
    assert metadata["base_model"] == "CompVis/stable-diffusion-v1-4" and "colorization" in metadata["tags"]
    assert metadata["license"]
    text = parsed.text
    assert "trust_remote_code=True" in text and "pip install" in text and "| PSNR | 20.1 |" in text
    assert "@article{wang2026edn" in text and "## Limitations" in text


def tiny_controlnet(unet) -> ControlNetModel:
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16))
    for module in [
        *controlnet.controlnet_down_blocks,
        controlnet.controlnet_mid_block,
        controlnet.controlnet_cond_embedding.conv_out,
    ]:
        torch.nn.init.normal_(module.weight, std=0.2)
    return controlnet


def test_a_controlnet_becomes_a_ccd_that_predicts_the_same_noise_without_hints():
    parts = tiny_components()
    controlnet = tiny_controlnet(parts["unet"])
    pipe = EDNPipeline(**{**parts, "ccd": CCDModel.from_controlnet(controlnet)})
    gray = torch.rand(2, 1, 32, 32, generator=seeded(1))
    condition = torch.cat([gray.repeat(1, 3, 1, 1), torch.zeros(2, 4, 32, 32)], dim=1)  # no hints
    latents = torch.randn(1, 4, 16, 16, generator=seeded(0))
    embeds = torch.randn(2, 16, 16, generator=seeded(2))
    t = torch.tensor(300)
    with torch.no_grad():
        ours = pipe.predict_noise(latents, t, embeds, condition, guidance_scale=5.0)
        model_input = torch.cat([latents] * 2)
        down, mid = controlnet(
            model_input, t, encoder_hidden_states=embeds, controlnet_cond=gray.repeat(1, 3, 1, 1), return_dict=False
        )
        noise = parts["unet"](
            model_input,
            t,
            encoder_hidden_states=embeds,
            down_block_additional_residuals=down,
            mid_block_additional_residual=mid,
            return_dict=False,
        )[0]
        uncond, text = noise.chunk(2)
    torch.testing.assert_close(ours, uncond + 5.0 * (text - uncond), rtol=1e-5, atol=1e-5)


def test_from_stable_diffusion_accepts_a_controlnet_folder(tmp_path, photo):
    parts = tiny_components()
    tiny_stable_diffusion(parts).save_pretrained(tmp_path / "sd")
    controlnet = tiny_controlnet(parts["unet"])
    controlnet.save_pretrained(tmp_path / "controlnet")
    pipe = EDNPipeline.from_stable_diffusion(str(tmp_path / "sd"), ccd=str(tmp_path / "controlnet"))
    assert isinstance(pipe.ccd, CCDModel) and pipe.ccd.config.conditioning_channels == 7
    name = "controlnet_cond_embedding.conv_in.weight"
    assert torch.equal(pipe.ccd.state_dict()[name][:, :3], controlnet.state_dict()[name])
    assert torch.count_nonzero(pipe.ccd.state_dict()[name][:, 3:]) == 0
    pipe.set_progress_bar_config(disable=True)
    assert pipe(photo, num_inference_steps=2).images[0].size == (photo.shape[1], photo.shape[0])


def test_a_controlnet_with_another_condition_is_refused():
    parts = tiny_components()
    controlnet = ControlNetModel.from_unet(
        parts["unet"], conditioning_embedding_out_channels=(8, 16), conditioning_channels=1
    )
    with pytest.raises(ValueError, match="3-channel condition"):
        CCDModel.from_controlnet(controlnet)
