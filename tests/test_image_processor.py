"""EDNImageProcessor: inputs to the model's tensors and back, L* kept exactly, bad input refused before work."""

import numpy as np
import PIL.Image
import pytest
import torch
import torch.nn.functional as F
from skimage import data
from skimage.color import rgb2lab

import edn_pipeline.image_processor as image_processor_module
import edn_pipeline.luminance as luminance_module
from edn_pipeline.errors import EDNInputError
from edn_pipeline.image_processor import MAX_PIXELS, EDNImageProcessor
from edn_pipeline.luminance import compose

RESOLUTION = 64


@pytest.fixture
def processor():
    return EDNImageProcessor(resolution=RESOLUTION, size_multiple=16)


@pytest.fixture
def astronaut():
    return np.asarray(PIL.Image.fromarray(data.astronaut()).resize((300, 200)))


def photo_colours(size: tuple[int, int]) -> torch.Tensor:
    """A decoded image (1, 3, h, w) in [0, 1] with a real photo's colours: what a decoder gives back."""
    colours = np.asarray(PIL.Image.fromarray(data.coffee()).resize(size), np.float32) / 255
    return torch.from_numpy(colours).permute(2, 0, 1)[None]


def test_config_round_trips_like_a_diffusers_processor(processor, tmp_path):
    processor.save_config(tmp_path)
    loaded = EDNImageProcessor.from_config(EDNImageProcessor.load_config(tmp_path))
    settings = ("resolution", "size_multiple", "max_pixels")
    assert {k: loaded.config[k] for k in settings} == {k: processor.config[k] for k in settings}
    assert EDNImageProcessor.from_config(processor.config, max_pixels=10).config.max_pixels == 10
    assert EDNImageProcessor().config.max_pixels == MAX_PIXELS


def test_preprocess_measures_lightness_at_input_size_and_the_gray_at_working_size(processor, astronaut):
    images = processor.preprocess([astronaut], [None])
    (lightness,) = images.lightness
    np.testing.assert_allclose(lightness.numpy(), rgb2lab(astronaut)[..., 0], atol=1e-3)
    assert images.gray.shape == (1, 1, 48, 64) and images.condition.shape == (1, 7, 48, 64)
    # The gray image is neutral, and its L* is the input's L* shrunk to the working size.
    gray = images.gray[0, 0].numpy()
    gray_lightness = rgb2lab(np.repeat(gray[..., None], 3, axis=-1))[..., 0]
    shrunk = F.interpolate(
        torch.from_numpy(rgb2lab(astronaut)[..., 0]).float()[None, None], size=(48, 64), mode="area"
    )[0, 0].numpy()
    assert np.abs(gray_lightness - shrunk).mean() < 2.0  # bicubic against area: measured 1.02
    # Without hints the condition is the gray three times, and zero colours and confidence.
    torch.testing.assert_close(images.condition[0, :3], images.gray[0].expand(3, -1, -1))
    assert images.condition[0, 3:].abs().max() == 0


def test_every_hint_is_validated_before_any_lightness_is_measured(processor, astronaut, monkeypatch):
    measured = []
    monkeypatch.setattr(image_processor_module, "lightness", lambda pixels: measured.append(pixels))
    with pytest.raises(EDNInputError, match="outside"):
        processor.preprocess([astronaut, astronaut], [None, [(1000, 5, "#ff0000")]])
    assert measured == []


def test_inputs_over_the_pixel_limit_are_refused_before_decoding(tmp_path, monkeypatch):
    small_limit = EDNImageProcessor(resolution=RESOLUTION, size_multiple=16, max_pixels=100 * 100)
    path = tmp_path / "scan.png"
    PIL.Image.new("L", (101, 100)).save(path)
    decoded = []
    monkeypatch.setattr(luminance_module.Image.Image, "load", lambda self: decoded.append(self))
    for image in (path, str(path)):
        with pytest.raises(EDNInputError, match=r"101×100 = 0\.0 megapixels, over the limit of 0\.0"):
            small_limit.read(image)
    assert decoded == []
    for image in (np.zeros((100, 101), np.uint8), torch.zeros(3, 100, 101)):
        with pytest.raises(EDNInputError, match="101×100"):
            small_limit.read(image)
    assert small_limit.read(np.zeros((100, 100), np.uint8)).shape == (100, 100, 1)


def test_a_declared_hundred_megapixel_png_is_refused_from_its_header(processor, tmp_path):
    """A 1-bit PNG header can declare 100,000 × 1,001 pixels in a few hundred bytes."""
    path = tmp_path / "bomb.png"
    PIL.Image.new("1", (100_000, 1_001)).save(path)
    assert path.stat().st_size < 100_000
    with pytest.raises(EDNInputError, match="100.1 megapixels, over the limit of 100.0"):
        processor.read(path)


@pytest.mark.parametrize("mode", ["L", "RGB", "I;16", "RGBA", "P", "float"])
def test_output_keeps_the_input_lightness_for_every_input_mode(processor, astronaut, mode):
    if mode == "float":
        image = astronaut.astype(np.float32) / 255
        expected = rgb2lab(astronaut)[..., 0]
    elif mode == "I;16":
        gray16 = (np.asarray(PIL.Image.fromarray(astronaut).convert("L"), np.uint16) * 257).astype(np.uint16)
        image = PIL.Image.fromarray(gray16)
        expected = rgb2lab(np.repeat(gray16[..., None] / 65535, 3, axis=-1))[..., 0]
    else:
        image = PIL.Image.fromarray(astronaut).convert(mode)
        expected = rgb2lab(np.asarray(image.convert("RGB")))[..., 0]
    images = processor.preprocess([image], [None])
    (result,) = processor.postprocess(photo_colours((64, 48)), images.lightness, "pil")
    assert result.size == (300, 200) and result.mode == "RGB"
    error = np.abs(rgb2lab(np.asarray(result))[..., 0] - expected)
    assert error.mean() < 0.5 and error.max() < 1.5
    assert np.hypot(*np.moveaxis(rgb2lab(np.asarray(result))[..., 1:], -1, 0)).mean() > 5  # it has colour


def test_output_types_agree(processor, astronaut):
    images = processor.preprocess([astronaut], [None])
    decoded = photo_colours((64, 48))
    (pil,) = processor.postprocess(decoded, images.lightness, "pil")
    as_np = processor.postprocess(decoded, images.lightness, "np")
    as_pt = processor.postprocess(decoded, images.lightness, "pt")
    assert as_np.shape == (1, 200, 300, 3) and as_pt.shape == (1, 3, 200, 300)
    np.testing.assert_allclose(as_pt[0].permute(1, 2, 0).numpy(), as_np[0])
    # 8-bit output is encoded by a table at 2**-20 steps (luminance._ENCODE_STEPS): the float output rounded, but for
    # values within a table step of a rounding boundary, which may land one level off
    difference = np.abs(np.asarray(pil).astype(int) - np.round(as_np[0] * 255).astype(int))
    assert difference.max() <= 1 and (difference > 0).mean() < 1e-3


@pytest.mark.parametrize("block", [999, 100])  # tiles of 3 whole rows; tiles of 100 pixels of one row
def test_tiled_upsampling_is_bilinear_upsampling(monkeypatch, block):
    """The chroma is upsampled one tile at a time: the same as F.interpolate's bilinear of the whole."""
    monkeypatch.setattr(luminance_module, "_BLOCK_PIXELS", block)
    rng = np.random.default_rng(0)
    lightness = torch.from_numpy(rng.uniform(20, 80, (120, 333)).astype(np.float32))
    ab = torch.from_numpy(rng.uniform(-15, 15, (2, 13, 37)).astype(np.float32))
    whole = F.interpolate(ab[None], size=(120, 333), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(compose(lightness, ab), compose(lightness, whole), atol=2e-5, rtol=0)
    pixels = torch.from_numpy(rng.integers(0, 256, (120, 333, 3), dtype=np.uint8))
    np.testing.assert_allclose(luminance_module.lightness(pixels).numpy(), rgb2lab(pixels.numpy())[..., 0], atol=1e-3)


@pytest.mark.parametrize("block", [999, 100])
def test_tiles_reusing_their_buffers_compose_as_one_tile(monkeypatch, block):
    """Every tile writes the buffers of the tile before (and tiles of a row get shorter): saturated colours, with
    many pixels through the gamut fit, come out the same as from a single tile."""
    rng = np.random.default_rng(1)
    lightness = torch.from_numpy(rng.uniform(0, 100, (60, 333)).astype(np.float32))
    ab = torch.from_numpy(rng.uniform(-120, 120, (2, 13, 37)).astype(np.float32))
    whole = compose(lightness, ab, torch.uint8)
    monkeypatch.setattr(luminance_module, "_BLOCK_PIXELS", block)
    tiled = compose(lightness, ab, torch.uint8)
    torch.testing.assert_close(tiled, whole, atol=0, rtol=0)
    error = np.abs(rgb2lab(tiled.numpy())[..., 0] - lightness.numpy())  # L* kept, measured by scikit-image
    assert error.mean() < 0.5 and error.max() < 1.5


def test_a_one_pixel_high_strip_is_colourised_with_its_lightness(processor, monkeypatch):
    """An extreme aspect (a legal PNG can be 1 pixel high): tiles split the row, the gray is averaged down first."""
    monkeypatch.setattr(luminance_module, "_BLOCK_PIXELS", 4096)
    strip = np.asarray(PIL.Image.fromarray(data.coffee()).resize((20_000, 1)))
    images = processor.preprocess([strip], [None])
    assert images.gray.shape == (1, 1, 16, 64)
    (result,) = processor.postprocess(photo_colours((64, 16)), images.lightness, "np")
    error = np.abs(rgb2lab(result)[..., 0] - rgb2lab(strip)[..., 0])
    assert result.shape == (1, 20_000, 3) and error.mean() < 0.5


def test_small_inputs_get_the_working_size_chroma_shrunk(processor):
    """An input smaller than the working size: the chroma is shrunk to it, and L* is still the input's."""
    tiny = np.asarray(PIL.Image.fromarray(data.coffee()).resize((20, 15)))
    images = processor.preprocess([tiny], [None])
    (result,) = processor.postprocess(photo_colours((64, 48)), images.lightness, "np")
    assert result.shape == (15, 20, 3)
    error = np.abs(rgb2lab(result)[..., 0] - rgb2lab(tiny)[..., 0])
    assert error.mean() < 0.5


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_runs_on_the_gpu_and_agrees_with_the_cpu(processor, astronaut):
    on_cpu = processor.preprocess([astronaut], [[(10, 10, "#c83c28")]])
    on_gpu = processor.preprocess([astronaut], [[(10, 10, "#c83c28")]], "cuda")
    assert on_gpu.lightness[0].device.type == "cuda"
    torch.testing.assert_close(on_gpu.condition.cpu(), on_cpu.condition, atol=1e-4, rtol=0)
    decoded = photo_colours((64, 48))
    cpu_out = processor.postprocess(decoded, on_cpu.lightness, "np")
    gpu_out = processor.postprocess(decoded.cuda(), on_gpu.lightness, "np")
    np.testing.assert_allclose(gpu_out, cpu_out, atol=1e-3)
