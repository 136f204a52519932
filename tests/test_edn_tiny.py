"""edn-tiny, the trained model shipped in the package: found with no model named, offline, and it colours."""

from pathlib import Path

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, UNet2DConditionModel
from skimage import data
from skimage.color import rgb2lab
from skimage.metrics import peak_signal_noise_ratio
from transformers import CLIPTextModel, CLIPTokenizer

from edn_pipeline import EDN_TINY, CCDModel, EDNPipeline, LuminanceDecoder
from edn_pipeline.cli import main


@pytest.fixture(scope="module")
def tiny() -> EDNPipeline:
    pipe = EDNPipeline.from_pretrained()
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def coffee() -> np.ndarray:
    """scikit-image's coffee cup at 200×150 (uint8 RGB)."""
    return np.array(PIL.Image.fromarray(data.coffee()).resize((200, 150), PIL.Image.Resampling.LANCZOS))


@pytest.fixture(scope="module")
def coffee_gray(coffee) -> np.ndarray:
    """The cup as a grayscale scan would be (uint8 H×W)."""
    return np.array(PIL.Image.fromarray(coffee).convert("L"))


def colourise(pipe, gray, **kwargs) -> np.ndarray:
    generator = torch.Generator().manual_seed(0)
    return np.array(pipe(PIL.Image.fromarray(gray), num_inference_steps=20, generator=generator, **kwargs).images[0])


def test_default_model_is_the_shipped_edn_tiny_with_the_full_models_classes(tiny):
    assert Path(tiny.name_or_path) == Path(EDN_TINY)
    expected = {
        "vae": AutoencoderKL,
        "unet": UNet2DConditionModel,
        "text_encoder": CLIPTextModel,
        "tokenizer": CLIPTokenizer,
        "ccd": CCDModel,
        "decoder": LuminanceDecoder,
    }
    for name, cls in expected.items():
        assert isinstance(getattr(tiny, name), cls), name
    assert tiny.decoder.quantizer is not None and tiny.decoder.refiner is not None
    # stored as float16 to halve the package, loaded as float32 for CPUs
    assert {p.dtype for p in tiny.unet.parameters()} == {torch.float32}
    assert {p.dtype for p in tiny.decoder.parameters()} == {torch.float32}


def test_shipped_weights_are_safetensors_within_50_mb():
    files = [p for p in Path(EDN_TINY).rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in {".bin", ".pt", ".pth", ".ckpt", ".safetensors"}]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) <= 50 * 2**20


def test_plain_diffusers_loads_it():
    assert isinstance(DiffusionPipeline.from_pretrained(EDN_TINY), EDNPipeline)


def mean_chroma(rgb: np.ndarray) -> float:
    lab = rgb2lab(rgb)
    return float(np.hypot(lab[..., 1], lab[..., 2]).mean())


def test_colours_a_real_photo_near_its_true_colours_keeping_its_lightness(tiny, coffee_gray, coffee):
    result = colourise(tiny, coffee_gray)
    assert result.shape == (*coffee_gray.shape, 3)
    lightness_in = rgb2lab(np.repeat(coffee_gray[..., None], 3, axis=-1))[..., 0]
    assert np.abs(rgb2lab(result)[..., 0] - lightness_in).mean() < 1.0
    assert mean_chroma(result) > 3  # gray has 0
    gray_rgb = np.repeat(coffee_gray[..., None], 3, axis=-1)
    # no worse than leaving the photo gray, by more than 1 dB
    assert peak_signal_noise_ratio(coffee, result) > peak_signal_noise_ratio(coffee, gray_rgb) - 1.0


def test_edn_colorize_needs_no_model_flag(tmp_path, coffee_gray):
    PIL.Image.fromarray(coffee_gray).save(tmp_path / "scan.png")
    assert main(["colorize", str(tmp_path / "scan.png"), "--out", str(tmp_path / "out"), "--steps", "5"]) == 0
    result = np.array(PIL.Image.open(tmp_path / "out" / "scan.png"))
    assert result.shape == (*coffee_gray.shape, 3)
    assert mean_chroma(result) > 3
