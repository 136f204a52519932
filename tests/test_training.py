"""The accelerate training scripts on a tiny model and a handful of small real photos, on CPU."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from huggingface_hub import ModelCard
from skimage import data

from edn_pipeline import EDNPipeline
from edn_pipeline.testing_utils import tiny_components, tiny_stable_diffusion

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny-sd")
    parts = tiny_components()
    tiny_stable_diffusion(parts).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """Four real photos with captions (the imagefolder convention) and one unreadable file."""
    folder = tmp_path_factory.mktemp("photos")
    with open(folder / "metadata.jsonl", "w") as f:
        for name in ("astronaut", "coffee", "chelsea", "rocket"):
            PIL.Image.fromarray(getattr(data, name)()).resize((40, 36)).save(folder / f"{name}.png")
            f.write(json.dumps({"file_name": f"{name}.png", "text": f"a photo of a {name}"}) + "\n")
        (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        f.write(json.dumps({"file_name": "broken.png", "text": "unreadable"}) + "\n")
    return folder


ACCELERATE = ("-m", "accelerate.commands.launch", "--cpu", "--num_processes", "1")
TORCHRUN_2 = ("-m", "torch.distributed.run", "--nproc_per_node", "2")  # accelerate's MULTI_CPU, gloo backend


def train(script, model, photos, out, *extra, launcher=ACCELERATE):
    command = [
        sys.executable,
        *launcher,
        str(ROOT / "training" / script),
        "--pretrained_model_name_or_path",
        str(model),
        "--train_data_dir",
        str(photos),
        "--output_dir",
        str(out),
        "--resolution",
        "32",
        "--train_batch_size",
        "2",
        "--learning_rate",
        "1e-3",
        "--report_to",
        "tensorboard",
        "--seed",
        "3",
        *map(str, extra),
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "PYTHONPATH": str(ROOT),
        "OMP_NUM_THREADS": "1",
        "ACCELERATE_USE_CPU": "1",
    }
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def logged(out: Path, tag: str = "loss") -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    values = {}
    for events in (out / "logs").rglob("events.out.tfevents.*"):
        accumulator = EventAccumulator(str(events))
        accumulator.Reload()
        if tag in accumulator.Tags()["scalars"]:
            values.update({e.step: e.value for e in accumulator.Scalars(tag)})
    return values


def resume(model, photos, whole: Path, resumed: Path, checkpoint: int, *extra) -> str:
    """Train in ``resumed`` from a copy of ``whole``'s checkpoint at step ``checkpoint`` (``--resume_from_checkpoint
    latest``), as a run killed after that checkpoint would be restarted; returns the run's output."""
    resumed.mkdir(exist_ok=True)
    shutil.copytree(whole / f"checkpoint-{checkpoint}", resumed / f"checkpoint-{checkpoint}")
    return train("train_ccd.py", model, photos, resumed, *extra, "--resume_from_checkpoint", "latest")


def test_ccd_stage_overfits_checkpoints_prunes_and_exports_a_pipeline(tiny_sd, photos, tmp_path):
    out = tmp_path / "ccd"
    log = train(
        "train_ccd.py",
        tiny_sd,
        photos,
        out,
        "--max_train_steps",
        30,
        "--train_unet",
        "--checkpointing_steps",
        10,
        "--checkpoints_total_limit",
        2,
        "--validation_image",
        photos / "coffee.png",
        "--validation_steps",
        15,
    )
    losses = logged(out)
    assert sorted(losses) == list(range(1, 31)) and all(np.isfinite(list(losses.values())))
    assert np.mean([losses[s] for s in range(26, 31)]) < np.mean([losses[s] for s in range(1, 6)])
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-20", "checkpoint-30"]
    assert logged(out, "skipped_images")[30] >= 1 and "unreadable" in log
    pipe = EDNPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    result = pipe(PIL.Image.open(photos / "rocket.png"), num_inference_steps=2).images[0]
    assert result.size == (40, 36)
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "diffusers" and card.data.pipeline_tag == "image-to-image"
    assert card.data.base_model == str(tiny_sd) and "colorization" in card.data.tags
    assert "| `learning_rate` | `0.001` |" in card.text and "Steps: 30" in card.text


def test_resume_continues_at_the_right_step_with_the_same_losses(tiny_sd, photos, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    train("train_ccd.py", tiny_sd, photos, whole, "--max_train_steps", 6, "--checkpointing_steps", 3)
    resumed.mkdir()
    (resumed / ".checkpoint-6.tmp").mkdir()  # a save killed midway: ignored, and the checkpoint before it used
    resume(tiny_sd, photos, whole, resumed, 3, "--max_train_steps", 6, "--checkpointing_steps", 3)
    a, b = logged(whole), logged(resumed)
    assert sorted(b) == [4, 5, 6]
    for step in (4, 5, 6):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-7)


def test_decoder_stage_with_vq_trains_the_quantiser_and_refiner(tiny_sd, photos, tmp_path):
    out = tmp_path / "decoder"
    train(
        "train_decoder.py",
        tiny_sd,
        photos,
        out,
        "--max_train_steps",
        12,
        "--decoder_vq",
        "--codebook_size",
        16,
        "--vq_num_train_timesteps",
        8,
        "--refiner_layers",
        1,
        "--refiner_dim",
        16,
    )
    vq, reconstruction = logged(out, "vq_diffusion"), logged(out, "reconstruction")
    assert len(vq) == 12 and all(np.isfinite(list(vq.values()))) and vq[1] > 0
    assert reconstruction[12] < reconstruction[1]
    pipe = EDNPipeline.from_pretrained(out)
    assert pipe.decoder.quantizer is not None and pipe.decoder.refiner is not None
    pipe.set_progress_bar_config(disable=True)
    assert pipe(PIL.Image.open(photos / "coffee.png"), num_inference_steps=2, vq_steps=3).images[0].size == (40, 36)


def test_refiner_stage_trains_only_the_token_refiner(tiny_sd, photos, tmp_path):
    start, out = tmp_path / "decoder", tmp_path / "refiner"
    vq = ("--codebook_size", 16, "--vq_num_train_timesteps", 8, "--refiner_layers", 1, "--refiner_dim", 16)
    train("train_decoder.py", tiny_sd, photos, start, "--max_train_steps", 2, "--decoder_vq", *vq)
    train("train_edn.py", start, photos, out, "--stage", "refiner", "--max_train_steps", 6)
    assert len(logged(out, "vq_diffusion")) == 6 and not logged(out, "reconstruction")
    before = EDNPipeline.from_pretrained(start).decoder.state_dict()
    after = EDNPipeline.from_pretrained(out).decoder.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith("refiner.") for name in changed)


def test_propagator_stage_adds_and_trains_only_the_hint_propagator(photos, tmp_path):
    start, out = tmp_path / "edn", tmp_path / "propagator"
    EDNPipeline(**tiny_components()).save_pretrained(start)
    train(
        "train_edn.py", start, photos, out, "--stage", "propagator", "--max_train_steps", 30, "--learning_rate", 3e-3
    )
    losses = logged(out, "propagation")
    assert len(losses) == 30 and not logged(out, "diffusion")
    early, late = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(26, 31)])
    assert late < early
    before, after = EDNPipeline.from_pretrained(start), EDNPipeline.from_pretrained(out)
    assert before.hint_propagator is None and after.hint_propagator is not None
    for name in ("unet", "ccd", "decoder", "text_encoder"):
        old, new = getattr(before, name).state_dict(), getattr(after, name).state_dict()
        assert all(torch.equal(old[k], new[k]) for k in old), name


def test_palette_stage_adds_and_trains_only_the_palette_prior(photos, tmp_path):
    start, out = tmp_path / "edn", tmp_path / "palette"
    EDNPipeline(**tiny_components()).save_pretrained(start)
    train("train_edn.py", start, photos, out, "--stage", "palette", "--max_train_steps", 30, "--learning_rate", 3e-3)
    losses = logged(out, "palette")
    assert len(losses) == 30 and not logged(out, "diffusion")
    early, late = np.mean([losses[s] for s in range(1, 6)]), np.mean([losses[s] for s in range(26, 31)])
    assert late < early
    before, after = EDNPipeline.from_pretrained(start), EDNPipeline.from_pretrained(out)
    assert before.palette_prior is None and after.palette_prior is not None and after.hint_propagator is None
    for name in ("unet", "ccd", "decoder", "text_encoder"):
        old, new = getattr(before, name).state_dict(), getattr(after, name).state_dict()
        assert all(torch.equal(old[k], new[k]) for k in old), name


def test_the_refiner_stage_needs_a_refiner(tiny_sd, photos, tmp_path):
    with pytest.raises(AssertionError, match="needs a decoder with a token refiner"):
        train("train_edn.py", tiny_sd, photos, tmp_path / "out", "--stage", "refiner", "--max_train_steps", 1)


def test_joint_stage_with_lora_optimises_equation_1(tiny_sd, photos, tmp_path):
    start = tmp_path / "start"
    train(
        "train_decoder.py",
        tiny_sd,
        photos,
        start,
        "--max_train_steps",
        1,
        "--decoder_vq",
        "--codebook_size",
        16,
        "--vq_num_train_timesteps",
        8,
        "--refiner_layers",
        1,
        "--refiner_dim",
        16,
    )
    out = tmp_path / "joint"
    train(
        "train_edn.py",
        start,
        photos,
        out,
        "--stage",
        "joint",
        "--max_train_steps",
        3,
        "--train_unet_lora",
        "--use_ema",
        "--gradient_checkpointing",
        "--checkpointing_steps",
        2,
    )
    assert {"ccd", "decoder", "ema_ccd", "ema_decoder", "unet_lora.safetensors"} <= {
        p.name for p in (out / "checkpoint-2").iterdir()
    }
    train(
        "train_edn.py",
        start,
        photos,
        out,
        "--stage",
        "joint",
        "--max_train_steps",
        4,
        "--train_unet_lora",
        "--use_ema",
        "--resume_from_checkpoint",
        "latest",
    )
    assert sorted(logged(out, "loss"))[-2:] == [3, 4]
    for tag in ("diffusion", "ccd", "vq_diffusion", "reconstruction", "loss"):
        assert len(logged(out, tag)) == 4, tag
    pipe = EDNPipeline.from_pretrained(out)  # LoRA merged: a plain pipeline
    assert not any("lora" in name for name, _ in pipe.unet.named_parameters())


def test_two_processes_split_the_data_and_keep_the_weights_in_sync(tiny_sd, photos, tmp_path):
    log = train(
        "train_ccd.py",
        tiny_sd,
        photos,
        tmp_path / "ddp",
        "--max_train_steps",
        2,
        "--train_batch_size",
        1,
        launcher=TORCHRUN_2,
    )
    lines = dict(re.findall(r"process (\d): (\d+ examples, trained-weight checksum \S+)", log))
    assert set(lines) == {"0", "1"}
    examples = {rank: int(line.split()[0]) for rank, line in lines.items()}
    assert examples == {"0": 2, "1": 2}  # each process took its own half of every step's batch
    assert lines["0"].split("checksum")[1] == lines["1"].split("checksum")[1]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--train_data_dir", "/nonexistent"], "is not a folder"),
        (["--caption_column", "caption"], "caption column 'caption' not found"),
        (
            ["--vae_decoder", "luminance"],
            "--vae_decoder, --chroma_weight and --latent_chroma_weight belong to the vae stage",
        ),
        (
            ["--hinted_start_prob", "0.5", "--hinted_start_timesteps", "100", "1000"],
            "edn training: --hinted_start_timesteps must end below the model's 1000 timesteps",
        ),
    ],
)
def test_bad_arguments_give_a_clear_message(tiny_sd, photos, tmp_path, extra, message):
    command = [
        sys.executable,
        str(ROOT / "training" / "train_ccd.py"),
        "--pretrained_model_name_or_path",
        str(tiny_sd),
        "--train_data_dir",
        str(photos),
        "--output_dir",
        str(tmp_path / "x"),
        *extra,
    ]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode != 0
    assert message in result.stderr.strip().splitlines()[-1]


def test_vae_stage_trains_the_autoencoder_and_rescales_its_latents(tiny_sd, photos, tmp_path):
    import torch

    out = tmp_path / "vae"
    train("train_edn.py", tiny_sd, photos, out, "--stage", "vae", "--max_train_steps", 20, "--learning_rate", 3e-3)
    reconstruction = logged(out, "reconstruction")
    assert np.mean([reconstruction[s] for s in range(16, 21)]) < np.mean([reconstruction[s] for s in range(1, 6)])
    pipe = EDNPipeline.from_pretrained(out)
    assert pipe.vae.config.scaling_factor != pytest.approx(0.18215)
    pixels = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        latents = pipe.vae.encode(pixels).latent_dist.mean
        assert torch.equal(pipe.decoder(latents, torch.zeros(1, 1, 32, 32)).sample, pipe.vae.decode(latents).sample)
        assert pipe.decoder.config.scaling_factor == pipe.vae.config.scaling_factor


def test_a_vae_stage_resumed_after_its_last_step_exports_again(tiny_sd, photos, tmp_path):
    """The latent scale is measured with the final encoder, so a rerun of a finished stage needs no statistics."""
    out = tmp_path / "vae"
    args = ("--stage", "vae", "--max_train_steps", 4, "--checkpointing_steps", 4, "--resume_from_checkpoint", "latest")
    train("train_edn.py", tiny_sd, photos, out, *args)
    first = EDNPipeline.from_pretrained(out).vae.config.scaling_factor
    train("train_edn.py", tiny_sd, photos, out, *args)
    again = EDNPipeline.from_pretrained(out).vae.config.scaling_factor
    assert first > 0 and again == pytest.approx(first, rel=0.5)


@pytest.mark.parametrize(
    "stage, extra",
    [
        (None, ["--stage", "ccd", "--vae_decoder", "luminance"]),
        ("decoder", ["--chroma_weight", "1"]),
        ("joint", ["--vae_decoder", "luminance", "--chroma_weight", "0.5"]),
        ("ccd", ["--latent_chroma_weight", "1"]),
    ],
)
def test_vae_stage_options_are_refused_elsewhere(photos, capsys, stage, extra):
    from edn_pipeline.training.trainer import parse_args

    common = ["--pretrained_model_name_or_path", "unused", "--train_data_dir", str(photos)]
    with pytest.raises(SystemExit) as info:
        parse_args(common + extra, stage=stage)
    assert info.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith("error: --vae_decoder, --chroma_weight and --latent_chroma_weight belong to the vae stage")
    )
    args = parse_args(
        common + ["--vae_decoder", "luminance", "--chroma_weight", "1", "--latent_chroma_weight", "2"], stage="vae"
    )
    assert (args.vae_decoder, args.chroma_weight, args.latent_chroma_weight) == ("luminance", 1.0, 2.0)
    assert parse_args(common + ["--vae_decoder", "kl"], stage="ccd").vae_decoder == "kl"  # the default: accepted


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--stage", "vae", "--ccd_condition_init", "random"],
            "--ccd_condition_init belongs to the ccd and joint stages",
        ),
        (["--stage", "ccd", "--point_hint_prob", "1.5"], "--point_hint_prob must lie in [0, 1]"),
        (["--stage", "ccd", "--proportion_empty_prompts", "-0.1"], "--proportion_empty_prompts must lie in [0, 1]"),
        (["--stage", "ccd", "--max_hint_points", "0"], "--max_hint_points must be at least 1"),
        (["--stage", "propagator", "--train_unet"], "the propagator stage does not train the UNet"),
        (["--stage", "propagator", "--train_text_encoder"], "the propagator stage does not train the text encoder"),
        (["--stage", "palette", "--train_unet_lora"], "the palette stage does not train the UNet"),
        (
            ["--stage", "propagator", "--cache_views", "2"],
            "--cache_views stores latents, not pixels: it needs the ccd stage, --lambda_ccd 0 and no --streaming",
        ),
        (
            ["--stage", "decoder", "--prediction_type", "v_prediction"],
            "--prediction_type belongs to the ccd and joint stages (the UNet's target)",
        ),
        (
            ["--stage", "refiner", "--timestep_bias_strategy", "later"],
            "--timestep_bias_strategy belongs to the ccd and joint stages (the UNet's timesteps)",
        ),
        (
            ["--stage", "ccd", "--timestep_bias_strategy", "later", "--timestep_bias_multiplier", "0"],
            "--timestep_bias_multiplier must be positive",
        ),
        (
            ["--stage", "ccd", "--timestep_bias_strategy", "later", "--timestep_bias_portion", "1.5"],
            "--timestep_bias_portion must lie in (0, 1]",
        ),
        (
            [
                "--stage",
                "ccd",
                "--timestep_bias_strategy",
                "range",
                "--timestep_bias_begin",
                "900",
                "--timestep_bias_end",
                "800",
            ],
            "--timestep_bias_begin must be at least 0 and below --timestep_bias_end",
        ),
        (
            ["--stage", "refiner", "--hinted_start_prob", "0.5"],
            "--hinted_start_prob belongs to the ccd and joint stages (the UNet's start)",
        ),
        (["--stage", "ccd", "--hinted_start_prob", "1.5"], "--hinted_start_prob must lie in [0, 1]"),
        (
            ["--stage", "ccd", "--hinted_start_prob", "0.5", "--hinted_start_timesteps", "400", "100"],
            "--hinted_start_timesteps must be FIRST LAST with 1 <= FIRST <= LAST",
        ),
        (
            ["--stage", "ccd", "--hinted_start_loss", "clean"],
            "--hinted_start_loss weighs the hinted starts of --hinted_start_prob, which is 0",
        ),
    ],
)
def test_hint_and_prompt_options_are_checked_before_loading(photos, capsys, extra, message):
    from edn_pipeline.training.trainer import parse_args

    with pytest.raises(SystemExit) as info:
        parse_args(["--pretrained_model_name_or_path", "unused", "--train_data_dir", str(photos), *extra])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(f"error: {message}")


def test_vae_stage_with_the_luminance_decoder_trains_and_exports_it(tiny_sd, photos, tmp_path):
    import torch
    from diffusers import AutoencoderKL

    out = tmp_path / "vae-luminance"
    train(
        "train_edn.py",
        tiny_sd,
        photos,
        out,
        "--stage",
        "vae",
        "--vae_decoder",
        "luminance",
        "--chroma_weight",
        1,
        "--latent_chroma_weight",
        1,
        "--max_train_steps",
        20,
        "--learning_rate",
        3e-3,
    )
    chroma, reconstruction = logged(out, "chroma"), logged(out, "reconstruction")
    latent_chroma = logged(out, "latent_chroma")
    assert sorted(chroma) == sorted(reconstruction) == sorted(latent_chroma) == list(range(1, 21))
    assert all(np.isfinite(list(chroma.values()))) and all(v > 0 for v in chroma.values())
    for losses in (chroma, reconstruction, latent_chroma):
        assert np.mean([losses[s] for s in range(16, 21)]) < np.mean([losses[s] for s in range(1, 6)])

    pipe = EDNPipeline.from_pretrained(out)
    start = AutoencoderKL.from_pretrained(tiny_sd, subfolder="vae")
    assert pipe.decoder.gray_encoder is not None
    assert pipe.vae.config.scaling_factor != pytest.approx(0.18215)
    assert pipe.decoder.config.scaling_factor == pipe.vae.config.scaling_factor
    # The decoder trained with the encoder is the one kept (its grayscale injections, zero at the start, learnt)...
    assert any(p.abs().max() > 0 for p in pipe.decoder.gray_injections.parameters())
    trained_weights = pipe.decoder.decoder.state_dict()
    assert any(not torch.equal(w, start.decoder.state_dict()[k]) for k, w in trained_weights.items())
    # ... and the VAE's own decoder is a copy of its KL decoder.
    assert trained_weights.keys() == pipe.vae.decoder.state_dict().keys()
    for name, weight in pipe.vae.decoder.state_dict().items():
        assert torch.equal(weight, trained_weights[name]), name
    if pipe.decoder.post_quant_conv is not None:
        for name, weight in pipe.vae.post_quant_conv.state_dict().items():
            assert torch.equal(weight, pipe.decoder.post_quant_conv.state_dict()[name]), name

    pipe.set_progress_bar_config(disable=True)
    assert pipe(PIL.Image.open(photos / "coffee.png"), num_inference_steps=2).images[0].size == (40, 36)


def test_point_hints_reach_the_ccd_stage(tiny_sd, photos, tmp_path):
    import torch

    points, regions = tmp_path / "points", tmp_path / "regions"
    common = ("--max_train_steps", 3, "--no_hint_prob", 0)
    train("train_ccd.py", tiny_sd, photos, points, *common, "--point_hint_prob", 1, "--max_hint_points", 3)
    train("train_ccd.py", tiny_sd, photos, regions, *common, "--point_hint_prob", 0)
    a = logged(points)
    assert sorted(a) == [1, 2, 3] and all(np.isfinite(list(a.values())))
    # Same data, noise and start; only the hints differ, so the CCD's condition embedding, the part that reads
    # them, ends up different. (The losses barely differ yet: a ControlNet's zero convolutions start it at no
    # effect at all.)
    trained_on_points = EDNPipeline.from_pretrained(points).ccd.controlnet_cond_embedding.conv_in.weight
    trained_on_regions = EDNPipeline.from_pretrained(regions).ccd.controlnet_cond_embedding.conv_in.weight
    assert trained_on_points.shape[1] == 7
    assert not torch.equal(trained_on_points, trained_on_regions)
    card = ModelCard.load(points / "README.md")
    assert "| `point_hint_prob` | `1.0` |" in card.text


def test_training_can_start_the_ccd_from_a_controlnet(tiny_sd, photos, tmp_path):
    import torch
    from diffusers import ControlNetModel, UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(tiny_sd, subfolder="unet")
    controlnet = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(16, 32))
    torch.nn.init.normal_(controlnet.controlnet_mid_block.weight, std=0.1)
    controlnet.save_pretrained(tmp_path / "controlnet")
    out = tmp_path / "from-controlnet"
    train(
        "train_ccd.py",
        tiny_sd,
        photos,
        out,
        "--max_train_steps",
        1,
        "--learning_rate",
        0,
        "--controlnet_model_name_or_path",
        tmp_path / "controlnet",
    )
    ccd = EDNPipeline.from_pretrained(out).ccd
    assert torch.equal(ccd.controlnet_mid_block.weight, controlnet.controlnet_mid_block.weight)
    name = "controlnet_cond_embedding.conv_in.weight"
    assert torch.equal(ccd.state_dict()[name][:, :3], controlnet.state_dict()[name])


def test_ccd_condition_init_random_restarts_the_condition_input_from_nonzero_weights(tiny_sd, photos, tmp_path):
    """ControlNet's zero start keeps an untrained condition out; "random" lets it in from the first step."""
    import torch

    outputs = {}
    for init in ("keep", "random"):
        out = tmp_path / init
        train(
            "train_ccd.py",
            tiny_sd,
            photos,
            out,
            "--max_train_steps",
            1,
            "--learning_rate",
            0,
            "--ccd_condition_init",
            init,
        )
        outputs[init] = EDNPipeline.from_pretrained(out).ccd.controlnet_cond_embedding.conv_out.weight
    assert not outputs["keep"].any()
    assert outputs["random"].abs().mean() > 1e-3
    assert "| `ccd_condition_init` | `random` |" in ModelCard.load(tmp_path / "random" / "README.md").text
    assert torch.isfinite(outputs["random"]).all()


def test_a_new_codebook_starts_at_latent_vectors_of_the_data(tiny_sd, photos):
    import torch

    from edn_pipeline.training.data import TrainingExampleTransform, collate_fn, load_image_dataset
    from edn_pipeline.training.trainer import init_codebook_from_data, load_starting_pipeline

    vq_options = dict(codebook_size=8, vq_num_train_timesteps=8, refiner_layers=1, refiner_dim=16)
    pipe, new_codebook = load_starting_pipeline(str(tiny_sd), vq_options=vq_options)
    assert new_codebook
    dataset = load_image_dataset(data_dir=photos).with_transform(TrainingExampleTransform(32, pipe.tokenizer))
    loader = torch.utils.data.DataLoader(dataset, batch_size=2, collate_fn=collate_fn)
    init_codebook_from_data(pipe, loader, seed=0)
    codes = pipe.decoder.quantizer.embedding.weight
    latents = torch.cat(
        [
            pipe.vae.encode(b["pixel_values"]).latent_dist.mode().permute(0, 2, 3, 1).reshape(-1, 4)
            for b in loader
            if b["num_examples"]
        ]
    )
    distances = torch.cdist(codes, latents).min(dim=1).values
    assert distances.max() < 1e-3  # every code is one of the data's latent vectors (up to float noise)


def test_cached_views_hold_what_the_transform_and_vae_make_for_that_epoch(tiny_sd, photos, tmp_path):
    from diffusers import AutoencoderKL
    from transformers import CLIPTokenizer

    from edn_pipeline.training.data import TrainingExampleTransform, load_image_dataset
    from edn_pipeline.training.latent_cache import cache_views

    vae = AutoencoderKL.from_pretrained(tiny_sd, subfolder="vae").eval()
    tokenizer = CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")
    options = dict(resolution=32, tokenizer=tokenizer, no_hint_prob=0.0, point_hint_prob=0.5, center_crop=False)
    dataset = load_image_dataset(data_dir=photos, cache_dir=tmp_path / "cache")
    views = cache_views(dataset, TrainingExampleTransform(**options), vae, count=2, batch_size=2)
    assert len(views) == 4  # the unreadable photo is left out
    reference = TrainingExampleTransform(**options)
    readable = [row for row in dataset if row["text"] != "unreadable"]
    for epoch in (0, 1, 2):
        views.set_epoch(epoch)
        reference.set_epoch(epoch % 2)
        for index, row in enumerate(readable):
            made = reference.transform_example(row["image"], row["text"])
            cached = views[index]
            with torch.no_grad():
                parameters = vae.encode(made["pixel_values"][None]).latent_dist.parameters[0]
            torch.testing.assert_close(cached["latent_parameters"], parameters, rtol=1e-5, atol=1e-5)
            condition = cached["conditioning_pixel_values"].float()
            assert torch.allclose(condition, made["conditioning_pixel_values"], atol=5e-4)
            assert torch.equal(cached["input_ids"], made["input_ids"])
    # the two views differ: crops and hints are drawn per epoch
    assert not torch.equal(views.views[0][0]["latent_parameters"], views.views[1][0]["latent_parameters"])


def test_ccd_stage_on_cached_views_trains_and_resumes_with_the_same_losses(tiny_sd, photos, tmp_path):
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    options = ("--cache_views", 2, "--lambda_ccd", 0, "--cache_dir", tmp_path / "cache", "--checkpointing_steps", 3)
    log = train("train_ccd.py", tiny_sd, photos, whole, "--max_train_steps", 6, "--train_unet", *options)
    assert "Encoding view 2 of 2" in log
    log = resume(tiny_sd, photos, whole, resumed, 3, "--max_train_steps", 6, "--train_unet", *options)
    assert "Encoding view" not in log  # read back from the data set's cache
    a, b = logged(whole), logged(resumed)
    assert sorted(a) == list(range(1, 7)) and all(np.isfinite(list(a.values())))
    for step in (4, 5, 6):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-7)
    assert EDNPipeline.from_pretrained(whole).ccd is not None


@pytest.mark.parametrize(
    "extra",
    [
        ("--stage", "ccd", "--cache_views", 2),  # --lambda_ccd 0.1 by default: L_CCD decodes the pixels not kept
        ("--stage", "joint", "--cache_views", 2, "--lambda_ccd", 0),
        ("--stage", "ccd", "--cache_views", -1),
    ],
)
def test_cache_views_is_refused_where_it_cannot_work(photos, capsys, extra):
    from edn_pipeline.training.trainer import parse_args

    common = ["--pretrained_model_name_or_path", "unused", "--train_data_dir", str(photos)]
    with pytest.raises(SystemExit) as info:
        parse_args(common + list(map(str, extra)))
    assert info.value.code == 2
    assert "--cache_views" in capsys.readouterr().err.strip().splitlines()[-1]


def test_per_channel_latents_are_measured_on_the_data_and_shipped_with_the_model(tiny_sd, photos, tmp_path):
    from diffusers import AutoencoderKL
    from transformers import CLIPTokenizer

    from edn_pipeline.training.data import TrainingExampleTransform, load_image_dataset

    out = tmp_path / "ccd"
    train("train_ccd.py", tiny_sd, photos, out, "--max_train_steps", 2, "--train_unet", "--per_channel_latents")
    # the same statistics, computed here: epoch 0's examples through the starting VAE's encoder
    vae = AutoencoderKL.from_pretrained(tiny_sd, subfolder="vae").eval()
    transform = TrainingExampleTransform(
        resolution=32, tokenizer=CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer"), seed=3
    )
    rows = [transform.transform_example(row["image"], row["text"]) for row in load_image_dataset(data_dir=photos)]
    with torch.no_grad():
        means = vae.encode(torch.stack([r["pixel_values"] for r in rows if r is not None])).latent_dist.mean
    channels = means.transpose(0, 1).flatten(1).double()
    pipe = EDNPipeline.from_pretrained(out)
    for config in (pipe.vae.config, pipe.decoder.config):
        assert config.scaling_factor == 1.0
        np.testing.assert_allclose(config.latents_mean, channels.mean(1).numpy(), rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(config.latents_std, channels.std(1).numpy(), rtol=1e-4, atol=1e-5)
    pipe.set_progress_bar_config(disable=True)
    photo = PIL.Image.open(photos / "rocket.png")
    assert pipe(photo, num_inference_steps=4, strength=0.5).images[0].size == (40, 36)


@pytest.fixture(scope="module")
def one_step(tiny_sd, photos, tmp_path_factory):
    """One ccd step (ε, L_dif only) into a fresh folder, with extra options: the same seed draws the same examples,
    noise and timesteps, so a run's logged loss differs from :func:`plain_step`'s only by what the options change."""

    def run(*extra) -> Path:
        out = tmp_path_factory.mktemp("one-step")
        train("train_ccd.py", tiny_sd, photos, out, "--max_train_steps", 1, "--lambda_ccd", 0, *extra)
        return out

    return run


@pytest.fixture(scope="module")
def plain_step(one_step) -> Path:
    return one_step()


def test_prediction_type_changes_the_target_and_ships_in_the_scheduler(one_step, plain_step):
    from diffusers import DDIMScheduler

    epsilon, velocity = plain_step, one_step("--prediction_type", "v_prediction")
    assert DDIMScheduler.load_config(epsilon / "scheduler")["prediction_type"] == "epsilon"
    assert DDIMScheduler.load_config(velocity / "scheduler")["prediction_type"] == "v_prediction"
    # the same seed draws the same noise, timesteps and examples: only the target differs
    assert logged(velocity)[1] != pytest.approx(logged(epsilon)[1], rel=1e-3)


@pytest.mark.parametrize(
    ("extra", "biased", "share"),
    [
        # 200 of 1,000 timesteps weigh 5: 1000 / (800 + 1000) of the draws
        (
            ["--timestep_bias_strategy", "later", "--timestep_bias_portion", "0.2", "--timestep_bias_multiplier", "5"],
            range(800, 1000),
            1000 / 1800,
        ),
        (
            [
                "--timestep_bias_strategy",
                "earlier",
                "--timestep_bias_portion",
                "0.1",
                "--timestep_bias_multiplier",
                "3",
            ],
            range(0, 100),
            300 / 1200,
        ),
        (
            ["--timestep_bias_strategy", "range", "--timestep_bias_begin", "850", "--timestep_bias_multiplier", "20"],
            range(850, 1000),
            3000 / 3850,
        ),
    ],
)
def test_timestep_bias_draws_the_biased_timesteps_more_often(photos, extra, biased, share):
    import torch

    from edn_pipeline import EDNPipeline
    from edn_pipeline.testing_utils import tiny_components
    from edn_pipeline.training.trainer import EDNTrainingModel, parse_args, timestep_weights

    common = ["--pretrained_model_name_or_path", "unused", "--train_data_dir", str(photos)]
    assert timestep_weights(parse_args(common, "ccd"), 1000) is None  # no bias: uniform draws
    weights = timestep_weights(parse_args(common + extra, "ccd"), 1000)
    assert weights.sum().item() == pytest.approx(1.0)
    assert weights[list(biased)].sum().item() == pytest.approx(share)

    # the training step draws its timesteps from them
    pipe = EDNPipeline(**tiny_components())
    model = EDNTrainingModel(pipe, pipe.scheduler, "ccd", 0.0, 0.0, 0.0, 0.0, timestep_weights=weights)
    drawn = []
    add_noise = pipe.scheduler.add_noise
    pipe.scheduler.add_noise = lambda latents, noise, timesteps: (
        drawn.append(timesteps) or add_noise(latents, noise, timesteps)
    )
    batch = {"conditioning_pixel_values": torch.rand(64, 7, 32, 32)}
    text = torch.zeros(64, 77, 16)
    with torch.no_grad():
        for seed in range(8):
            model.ccd_losses(torch.randn(64, 4, 16, 16), text, batch, torch.Generator().manual_seed(seed))
    drawn = torch.cat(drawn)
    inside = torch.isin(drawn, torch.tensor(list(biased))).float().mean().item()
    assert inside == pytest.approx(share, abs=0.07)  # 512 draws: a few standard errors


def test_prediction_type_is_accepted_by_the_joint_stage(photos):
    from edn_pipeline.training.trainer import parse_args

    common = ["--pretrained_model_name_or_path", "unused", "--train_data_dir", str(photos)]
    assert (
        parse_args(common + ["--stage", "joint", "--prediction_type", "v_prediction"]).prediction_type
        == "v_prediction"
    )


@pytest.mark.parametrize("loss", ["prediction", "clean"])
def test_hinted_starts_begin_where_strength_below_one_does_and_learn_the_step_to_the_photo(photos, loss):
    """With --hinted_start_prob 1 every example starts from the VAE latent of its hint-coloured photo (the gray one
    without hints), noised to a timestep in the range, and its target is the UNet output whose x̃_0 is the photo;
    with --hinted_start_loss clean the loss is the squared error of that x̃_0 itself."""
    import torch
    from diffusers import DDPMScheduler

    from edn_pipeline import EDNPipeline
    from edn_pipeline.testing_utils import tiny_components
    from edn_pipeline.training.trainer import EDNTrainingModel, parse_args

    common = ["--pretrained_model_name_or_path", "unused", "--train_data_dir", str(photos)]
    args = parse_args(
        common + ["--hinted_start_prob", "1", "--hinted_start_timesteps", "150", "250", "--hinted_start_loss", loss],
        "ccd",
    )
    assert (args.hinted_start_prob, args.hinted_start_timesteps, args.hinted_start_loss) == (1.0, [150, 250], loss)
    assert parse_args(common, "ccd").hinted_start_prob == 0.0  # off unless asked
    assert parse_args(common, "ccd").hinted_start_loss == "prediction"

    pipe = EDNPipeline(**tiny_components())
    scheduler = DDPMScheduler.from_config(pipe.scheduler.config, prediction_type="v_prediction")
    model = EDNTrainingModel(
        pipe,
        scheduler,
        "ccd",
        0.0,
        0.0,
        0.0,
        0.0,
        hinted_start_prob=1.0,
        hinted_start_timesteps=args.hinted_start_timesteps,
        hinted_start_loss=args.hinted_start_loss,
    )
    gen = torch.Generator().manual_seed(0)
    gray = torch.rand(2, 1, 32, 32, generator=gen).expand(2, 3, 32, 32)
    hint_rgb, confidence = torch.rand(2, 3, 32, 32, generator=gen), torch.zeros(2, 1, 32, 32)
    confidence[0, :, 4:8, 4:8] = 1  # the first image has a hint, the second none
    batch = {"conditioning_pixel_values": torch.cat([gray, hint_rgb, confidence], 1)}
    noised, predicted = [], []
    add_noise = scheduler.add_noise
    scheduler.add_noise = lambda latents, noise, t: noised.append((latents, noise, t)) or add_noise(latents, noise, t)
    unet_forward = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: predicted.append(unet_forward(*a, **k)[0]) or (predicted[-1],)
    photo_latents = torch.randn(2, 4, 16, 16, generator=gen)
    with torch.no_grad():
        l_dif, _ = model.ccd_losses(photo_latents, torch.zeros(2, 77, 16), batch, torch.Generator().manual_seed(1))

    start_latents, noise, t = noised[-1]
    # the start: the hint colours where there are hints, else the gray, through the VAE's mode
    pixels = torch.stack([hint_rgb[0], gray[1]]) * 2 - 1
    with torch.no_grad():
        expected = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
    torch.testing.assert_close(start_latents, expected)
    assert ((t >= 150) & (t <= 250)).all()
    # the target: v such that sqrt(ᾱ)·x_t − sqrt(1 − ᾱ)·v is the photo's latent
    alpha = scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = alpha.sqrt() * start_latents + (1 - alpha).sqrt() * noise
    photo = photo_latents * pipe.vae.config.scaling_factor
    target = (alpha.sqrt() * x_t - photo) / (1 - alpha).sqrt()
    if loss == "prediction":
        assert l_dif.item() == pytest.approx(torch.mean((predicted[-1] - target) ** 2).item(), rel=1e-5)
    else:  # the clean latent the predicted v implies, against the photo's
        x_0 = alpha.sqrt() * x_t - (1 - alpha).sqrt() * predicted[-1]
        assert l_dif.item() == pytest.approx(torch.mean((x_0 - photo) ** 2).item(), rel=1e-4)


def test_hinted_start_timesteps_must_end_inside_the_schedule():
    from edn_pipeline import EDNPipeline
    from edn_pipeline.testing_utils import tiny_components
    from edn_pipeline.training.trainer import EDNTrainingModel

    pipe = EDNPipeline(**tiny_components())
    with pytest.raises(ValueError, match="must end below the scheduler's 1000 training timesteps"):
        EDNTrainingModel(
            pipe, pipe.scheduler, "ccd", 0.0, 0.0, 0.0, 0.0, hinted_start_prob=0.5, hinted_start_timesteps=(100, 1000)
        )


def test_hinted_start_prob_reaches_the_training_step(one_step, plain_step, tiny_sd):
    from diffusers import DDPMScheduler

    hinted = one_step("--hinted_start_prob", 1, "--hinted_start_timesteps", 100, 200)
    # the same seed draws the same examples and noise: only where the examples start, and so the loss, differs
    assert logged(hinted)[1] != pytest.approx(logged(plain_step)[1], rel=1e-3)
    # the same step weighed as clean latents: each example's error times (1 − ᾱ_t) / ᾱ_t (ε), t in [100, 200]
    clean = one_step("--hinted_start_prob", 1, "--hinted_start_timesteps", 100, 200, "--hinted_start_loss", "clean")
    alpha_bar = DDPMScheduler.from_pretrained(tiny_sd, subfolder="scheduler").alphas_cumprod[[100, 200]]
    low, high = ((1 - alpha_bar) / alpha_bar).tolist()
    assert low <= logged(clean)[1] / logged(hinted)[1] <= high


def test_train_text_encoder_trains_it_checkpoints_it_and_resumes_with_the_same_losses(tiny_sd, photos, tmp_path):
    from transformers import CLIPTextModel

    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    options = ("--train_text_encoder", "--use_ema", "--lambda_ccd", 0, "--checkpointing_steps", 2)
    train("train_ccd.py", tiny_sd, photos, whole, "--max_train_steps", 4, *options)
    # the checkpoint holds the encoder in transformers' format; EMA averages only the diffusers components
    saved = {p.name for p in (whole / "checkpoint-2").iterdir()}
    assert {"ccd", "text_encoder", "ema_ccd"} <= saved and "ema_text_encoder" not in saved
    start = CLIPTextModel.from_pretrained(tiny_sd, subfolder="text_encoder").state_dict()
    trained = EDNPipeline.from_pretrained(whole).text_encoder.state_dict()
    changed = [name for name in start if not torch.equal(start[name], trained[name])]
    assert "embeddings.token_embedding.weight" in changed
    resume(tiny_sd, photos, whole, resumed, 2, "--max_train_steps", 4, *options)
    a, b = logged(whole), logged(resumed)
    assert sorted(b) == [3, 4]
    for step in (3, 4):
        assert b[step] == pytest.approx(a[step], rel=1e-5, abs=1e-7)
    again = EDNPipeline.from_pretrained(resumed).text_encoder.state_dict()
    for name in trained:
        torch.testing.assert_close(again[name], trained[name], rtol=1e-5, atol=1e-6)


def test_frozen_text_encoder_is_exported_unchanged(tiny_sd, photos, tmp_path):
    from transformers import CLIPTextModel

    out = tmp_path / "ccd"
    train("train_ccd.py", tiny_sd, photos, out, "--max_train_steps", 2, "--lambda_ccd", 0)
    start = CLIPTextModel.from_pretrained(tiny_sd, subfolder="text_encoder").state_dict()
    after = EDNPipeline.from_pretrained(out).text_encoder.state_dict()
    assert all(torch.equal(start[name], after[name]) for name in start)


@pytest.mark.parametrize("stage", ["decoder", "refiner", "vae"])
def test_train_text_encoder_is_refused_where_no_words_are_read(photos, capsys, stage):
    from edn_pipeline.training.trainer import parse_args

    common = ["--pretrained_model_name_or_path", "unused", "--train_data_dir", str(photos), "--train_text_encoder"]
    with pytest.raises(SystemExit) as info:
        parse_args(common, stage=stage)
    assert info.value.code == 2
    assert (
        capsys.readouterr()
        .err.strip()
        .splitlines()[-1]
        .endswith(f"error: the {stage} stage does not train the text encoder")
    )
    assert (
        parse_args(common, stage="ccd").train_text_encoder and not parse_args(common[:-1], "joint").train_text_encoder
    )


def test_train_word_embeddings_changes_only_those_words(tiny_sd, photos, tmp_path):
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTokenizer

    out = tmp_path / "words"
    # the default AdamW weight decay would shrink every row; the other words must still come out bit-identical
    train(
        "train_ccd.py", tiny_sd, photos, out, "--max_train_steps", 3, "--lambda_ccd", 0, "--train_word_embeddings", "a"
    )
    word = CLIPTokenizer.from_pretrained(tiny_sd, subfolder="tokenizer")("a").input_ids[1]
    start, trained = StableDiffusionPipeline.from_pretrained(tiny_sd), EDNPipeline.from_pretrained(out)
    before = start.text_encoder.get_input_embeddings().weight
    after = trained.text_encoder.get_input_embeddings().weight
    changed = (before != after).any(dim=1).nonzero().ravel().tolist()
    assert changed == [word]
    for name in ("vae", "text_encoder", "unet"):
        a, b = getattr(start, name).state_dict(), getattr(trained, name).state_dict()
        frozen = [k for k in a if "token_embedding" not in k]
        assert all(torch.equal(a[k], b[k]) for k in frozen), name


def test_train_word_embeddings_names_a_word_that_is_not_one_token(tiny_sd, photos, tmp_path):
    with pytest.raises(AssertionError, match="'photo' is 5 tokens"):
        train(
            "train_ccd.py",
            tiny_sd,
            photos,
            tmp_path / "out",
            "--max_train_steps",
            1,
            "--train_word_embeddings",
            "photo",
        )


@pytest.mark.parametrize(
    "stage, extra, message",
    [
        ("vae", [], "the vae stage does not train the text encoder"),
        ("ccd", ["--train_unet"], "--train_word_embeddings trains nothing else"),
        ("joint", ["--train_text_encoder"], "--train_word_embeddings trains nothing else"),
        ("ccd", ["--ccd_condition_init", "random"], "--train_word_embeddings trains nothing else"),
    ],
)
def test_train_word_embeddings_is_refused_with_what_it_excludes(photos, capsys, stage, extra, message):
    from edn_pipeline.training.trainer import parse_args

    common = ["--pretrained_model_name_or_path", "unused", "--train_data_dir", str(photos)]
    with pytest.raises(SystemExit) as info:
        parse_args(common + ["--train_word_embeddings", "red", "blue"] + extra, stage=stage)
    assert info.value.code == 2
    assert message in capsys.readouterr().err.strip().splitlines()[-1]
    assert parse_args(common + ["--train_word_embeddings", "red", "blue"], stage="ccd").train_word_embeddings == [
        "red",
        "blue",
    ]
