"""Tests for edn_pipeline.luminance.

Expected numbers come from published CIELAB values (D65, sRGB), from
skimage's rgb2lab applied to the decoded picture, or from pixel data built
by hand with numpy — never from the function under test itself.
"""

import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from skimage.color import lab2rgb, lab2xyz, rgb2lab
from skimage.color.colorconv import rgb_from_xyz

from edn_pipeline.errors import EDNInputError
from edn_pipeline.luminance import (
    chroma,
    compose_with_lightness,
    gray_from_lightness,
    to_lightness,
    to_uint8,
)


@pytest.fixture(scope="module")
def astronaut():
    """A 128×128 uint8 RGB photo with saturated skin, flag and suit colours."""
    return data.astronaut()[::4, ::4].copy()


@pytest.fixture(scope="module")
def coffee():
    return data.coffee()[::4, ::4].copy()  # 100×150


@pytest.fixture(scope="module")
def camera():
    """A 128×128 uint8 grayscale photo."""
    return data.camera()[::4, ::4].copy()


def skimage_lightness(rgb_uint8):
    """Reference L*: skimage's rgb2lab on the sRGB pixels, nothing else."""
    return rgb2lab(rgb_uint8.astype(np.float64) / 255.0)[..., 0]


def gray_reference(gray_uint8):
    return skimage_lightness(np.repeat(gray_uint8[..., None], 3, axis=-1))


# --------------------------------------------------------------------------
# Known L* values
# --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rgb", "expected"),
    [
        ((255, 255, 255), 100.0),
        ((0, 0, 0), 0.0),
        ((119, 119, 119), 50.0),  # L* = 50 is sRGB ~119 (118.9)
        ((255, 0, 0), 53.2408),  # published L* of sRGB red
        ((0, 255, 0), 87.7347),  # published L* of sRGB green
        ((0, 0, 255), 32.2970),  # published L* of sRGB blue
    ],
)
def test_known_lightness_values(rgb, expected):
    image = np.full((2, 3, 3), rgb, dtype=np.uint8)
    lightness = to_lightness(image)
    assert lightness.shape == (2, 3)
    assert lightness.dtype == np.float32
    tolerance = 0.05 if expected == 50.0 else 0.01
    np.testing.assert_allclose(lightness, expected, atol=tolerance)


def test_gray_value_is_neutral_srgb_gray():
    gray = np.array([[0, 119, 255]], dtype=np.uint8)
    np.testing.assert_allclose(to_lightness(gray)[0], [0.0, 50.0, 100.0], atol=0.05)


def test_photo_matches_skimage(astronaut):
    np.testing.assert_allclose(to_lightness(astronaut), skimage_lightness(astronaut), atol=1e-3)


# --------------------------------------------------------------------------
# numpy and torch inputs
# --------------------------------------------------------------------------


def test_numpy_dtypes_and_layouts_agree(camera):
    expected = gray_reference(camera)
    variants = {
        "uint8 (H,W)": camera,
        "uint8 (H,W,1)": camera[..., None],
        "uint8 gray (H,W,3)": np.repeat(camera[..., None], 3, axis=-1),
        "uint16 (H,W)": camera.astype(np.uint16) * 257,
        "float32 (H,W)": camera.astype(np.float32) / 255,
        "float64 (H,W,1)": camera[..., None] / 255.0,
    }
    for name, image in variants.items():
        np.testing.assert_allclose(to_lightness(image), expected, atol=1e-3, err_msg=name)


def test_bool_array_is_black_and_white():
    mask = np.array([[True, False], [False, True]])
    np.testing.assert_allclose(to_lightness(mask), [[100, 0], [0, 100]], atol=1e-3)


def test_alpha_channel_is_ignored(astronaut):
    rng = np.random.default_rng(0)
    alpha = rng.integers(0, 256, astronaut.shape[:2], dtype=np.uint8)
    rgba = np.dstack([astronaut, alpha])
    np.testing.assert_allclose(to_lightness(rgba), skimage_lightness(astronaut), atol=1e-3)


def test_float_slightly_outside_unit_range_is_accepted():
    image = np.array([[-5e-4, 1 + 5e-4]])
    np.testing.assert_allclose(to_lightness(image), [[0.0, 100.0]], atol=1e-3)


def test_torch_tensors_channels_first(astronaut, camera):
    expected_rgb = skimage_lightness(astronaut)
    chw = torch.from_numpy(astronaut).permute(2, 0, 1)
    np.testing.assert_allclose(to_lightness(chw), expected_rgb, atol=1e-3)
    as_float = (chw.float() / 255).requires_grad_()
    np.testing.assert_allclose(to_lightness(as_float), expected_rgb, atol=1e-3)
    rgba = torch.cat([chw, torch.zeros_like(chw[:1])])
    np.testing.assert_allclose(to_lightness(rgba), expected_rgb, atol=1e-3)

    expected_gray = gray_reference(camera)
    gray = torch.from_numpy(camera)
    np.testing.assert_allclose(to_lightness(gray), expected_gray, atol=1e-3)
    np.testing.assert_allclose(to_lightness(gray[None].half() / 255), expected_gray, atol=0.1)


# --------------------------------------------------------------------------
# PIL images, every mode
# --------------------------------------------------------------------------


def test_rgb_like_modes_match_rgb(astronaut):
    expected = skimage_lightness(astronaut)
    rgb = Image.fromarray(astronaut)
    rgba = rgb.copy()
    rgba.putalpha(Image.fromarray(np.arange(astronaut.size // 3, dtype=np.uint8).reshape(128, 128)))
    h, w = astronaut.shape[:2]
    # PIL's CMYK is C = 255 - R (etc.) with K = 0; build it by hand.
    cmyk_bytes = np.dstack([255 - astronaut, np.zeros((h, w), np.uint8)]).tobytes()
    cmyk = Image.frombytes("CMYK", (w, h), cmyk_bytes)
    for name, image in {"RGB": rgb, "RGBA": rgba, "CMYK": cmyk}.items():
        np.testing.assert_allclose(to_lightness(image), expected, atol=1e-3, err_msg=name)


def test_ycbcr_mode_matches_rgb(astronaut):
    # YCbCr round trip is lossy (8-bit chroma), so compare loosely.
    ycbcr = Image.fromarray(astronaut).convert("YCbCr")
    diff = np.abs(to_lightness(ycbcr) - skimage_lightness(astronaut))
    assert diff.mean() < 0.5
    assert diff.max() < 3


def test_palette_modes_use_palette_colours(astronaut, tmp_path):
    quantized = Image.fromarray(astronaut).quantize(64)
    palette = np.array(quantized.getpalette(), dtype=np.uint8).reshape(-1, 3)
    expected = skimage_lightness(palette[np.asarray(quantized)])
    np.testing.assert_allclose(to_lightness(quantized), expected, atol=1e-3)

    quantized.info["transparency"] = 0  # palette entry 0 transparent
    path = tmp_path / "palette.png"
    quantized.save(path, transparency=0)
    reloaded = Image.open(path)
    assert reloaded.mode == "P" and "transparency" in reloaded.info
    np.testing.assert_allclose(to_lightness(reloaded), expected, atol=1e-3)
    np.testing.assert_allclose(to_lightness(quantized.convert("PA")), expected, atol=1e-3)


def test_gray_modes_match_l_mode(camera):
    expected = gray_reference(camera)
    h, w = camera.shape
    wide = camera.astype(np.uint16) * 257
    gray_alpha = Image.fromarray(camera).convert("LA")
    variants = {
        "L": Image.fromarray(camera),
        "LA": gray_alpha,
        "La": gray_alpha.convert("La"),
        "I;16": Image.frombytes("I;16", (w, h), wide.astype("<u2").tobytes()),
        "I;16B": Image.frombytes("I;16B", (w, h), wide.astype(">u2").tobytes()),
        "I": Image.fromarray(wide.astype(np.int32)),
        "F": Image.fromarray(camera.astype(np.float32) / 255),
    }
    for mode, image in variants.items():
        assert image.mode == mode
        np.testing.assert_allclose(to_lightness(image), expected, atol=1e-3, err_msg=mode)


def test_bilevel_mode_is_black_and_white(camera):
    bilevel = Image.fromarray(camera).convert("1")
    expected = np.where(np.asarray(bilevel), 100.0, 0.0)
    np.testing.assert_allclose(to_lightness(bilevel), expected, atol=1e-3)


def test_lab_mode_reads_l_channel():
    # PIL's LAB stores L* * 255 / 100 in the first band.
    image = Image.new("LAB", (3, 2), (128, 140, 90))
    np.testing.assert_allclose(to_lightness(image), 128 * 100 / 255, atol=1e-3)


def test_sixteen_bit_png_from_disk(camera, tmp_path):
    path = tmp_path / "wide.png"
    Image.fromarray(camera.astype(np.uint16) * 257).save(path)
    np.testing.assert_allclose(to_lightness(path), gray_reference(camera), atol=1e-3)


@pytest.mark.parametrize(("orientation", "quarter_turns"), [(1, 0), (3, 2), (6, -1), (8, 1)])
def test_exif_orientation_is_applied(astronaut, tmp_path, orientation, quarter_turns):
    picture = astronaut[:40, :96]  # landscape, 40×96
    exif = Image.Exif()
    exif[0x0112] = orientation
    png = tmp_path / "rotated.png"
    Image.fromarray(picture).save(png, exif=exif)
    # Orientation 6 means "rotate 90° clockwise to display", 8 counter-clockwise, 3 half a turn; 1 is upright.
    expected = np.rot90(skimage_lightness(picture), k=quarter_turns)
    np.testing.assert_allclose(to_lightness(str(png)), expected, atol=1e-3)

    jpeg = tmp_path / "rotated.jpg"
    Image.fromarray(picture).save(jpeg, exif=exif, quality=95)
    assert to_lightness(jpeg).shape == expected.shape


# --------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------


def test_truncated_file_raises(astronaut, tmp_path):
    path = tmp_path / "truncated.png"
    Image.fromarray(astronaut).save(path)
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    with pytest.raises(EDNInputError, match="could not read image"):
        to_lightness(path)
    with Image.open(path) as opened, pytest.raises(EDNInputError, match="could not read image"):
        to_lightness(opened)


def test_missing_and_non_image_files_raise(tmp_path):
    missing = tmp_path / "nope.png"
    with pytest.raises(EDNInputError, match="nope.png"):
        to_lightness(missing)
    text = tmp_path / "notes.txt"
    text.write_text("not a picture")
    with pytest.raises(EDNInputError, match="notes.txt"):
        to_lightness(str(text))
    with pytest.raises(EDNInputError, match="could not read image"):
        to_lightness(tmp_path)  # a directory


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((0, 5), np.uint8),
        np.zeros((4, 0, 3), np.float32),
        torch.zeros(3, 0, 7),
        Image.new("L", (0, 4)),
    ],
    ids=["numpy-HW", "numpy-HWC", "torch", "PIL"],
)
def test_empty_image_raises(image):
    with pytest.raises(EDNInputError, match=r"image is empty \(\d+×\d+ pixels\)"):
        to_lightness(image)


@pytest.mark.parametrize(
    "image",
    [
        np.zeros(5, np.uint8),
        np.zeros((4, 5, 2), np.uint8),
        np.zeros((4, 5, 5), np.uint8),
        np.zeros((3, 4, 5), np.uint8).reshape(1, 3, 4, 5),
        torch.zeros(2, 4, 5),
        torch.zeros(1, 3, 4, 5),
    ],
)
def test_wrong_shape_raises_naming_the_shape(image):
    shape = tuple(image.shape)
    with pytest.raises(EDNInputError, match=re.escape(f"shape {shape}")):
        to_lightness(image)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.array([[0.2, 1.5]]), "range"),
        (np.array([[-0.1, 0.5]]), "range"),
        (np.array([[0.2, np.nan]]), "NaN"),
        (np.array([[0.2, np.inf]]), "NaN or infinite"),
        (np.array([[1, 2]], dtype=np.int64), "int64"),
        (torch.tensor([[0.5, 2.0]]), "range"),
        (torch.tensor([[1, 2]]), "int64"),
        (Image.fromarray(np.array([[0.0, 255.0]], dtype=np.float32)), "range"),
    ],
)
def test_bad_pixel_values_raise(image, message):
    with pytest.raises(EDNInputError, match=message):
        to_lightness(image)


@pytest.mark.parametrize(("image", "name"), [(None, "NoneType"), ([[0, 1]], "list"), (7, "int")])
def test_unsupported_type_raises_naming_it(image, name):
    with pytest.raises(EDNInputError, match=name):
        to_lightness(image)


def test_errors_are_value_errors():
    assert issubclass(EDNInputError, ValueError)


# --------------------------------------------------------------------------
# gray_from_lightness, chroma, to_uint8
# --------------------------------------------------------------------------


def test_gray_round_trip_all_8bit_values():
    gray = np.arange(256, dtype=np.uint8).reshape(16, 16)
    restored = gray_from_lightness(to_lightness(Image.fromarray(gray))) * 255
    assert restored.shape == (16, 16) and restored.dtype == np.float32
    np.testing.assert_allclose(restored, gray, atol=1e-3 * 255)


def test_gray_from_known_lightness():
    # L* 50 -> Y = (66/116)**3 = 0.18419 -> sRGB 0.46626 (~118.9 / 255).
    values = gray_from_lightness(np.array([[0.0, 50.0, 100.0]]))
    np.testing.assert_allclose(values, [[0.0, 0.46626, 1.0]], atol=2e-4)


def test_chroma_known_values():
    pixels = np.array([[[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]]])
    ab = chroma(pixels)
    assert ab.shape == (1, 3, 2) and ab.dtype == np.float32
    np.testing.assert_allclose(ab[0, 0], [80.109, 67.220], atol=0.05)  # published sRGB red
    np.testing.assert_allclose(ab[0, 1:], 0.0, atol=0.02)  # neutral grays


@pytest.mark.parametrize("rgb", [np.zeros((4, 4)), np.zeros((4, 4, 4)), np.full((2, 2, 3), 2.0), [[[0.0, 0.0, 0.0]]]])
def test_chroma_rejects_bad_input(rgb):
    with pytest.raises(EDNInputError):
        chroma(rgb)


def test_to_uint8_rounds_and_clips():
    values = np.array([[-0.2, 0.0, 0.2, 0.5 / 255, 1.49 / 255, 1.0, 1.3]])
    np.testing.assert_array_equal(to_uint8(values), [[0, 0, 51, 0, 1, 255, 255]])
    assert to_uint8(values).dtype == np.uint8
    with pytest.raises(EDNInputError):
        to_uint8(np.array([np.nan]))


# --------------------------------------------------------------------------
# compose_with_lightness
# --------------------------------------------------------------------------


def lab_of(rgb_uint8):
    return rgb2lab(rgb_uint8.astype(np.float64) / 255.0)


def test_true_chroma_reproduces_photo(astronaut, coffee):
    for photo in (astronaut, coffee):
        result = compose_with_lightness(to_lightness(photo), chroma(photo / 255.0))
        assert result.shape == photo.shape and result.dtype == np.float32
        assert np.abs(result - photo / 255.0).mean() < 2 / 255


def test_exaggerated_chroma_keeps_lightness_and_hue(astronaut):
    lightness = to_lightness(astronaut)
    requested = chroma(astronaut / 255.0) * 3
    result = compose_with_lightness(lightness, requested)
    assert 0.0 <= result.min() and result.max() <= 1.0

    lab = lab_of(to_uint8(result))
    assert np.abs(lab[..., 0] - lightness).mean() < 0.5

    requested_chroma = np.hypot(*np.moveaxis(requested, -1, 0))
    result_chroma = np.hypot(lab[..., 1], lab[..., 2])
    shrunk = result_chroma < 0.98 * requested_chroma
    assert shrunk.mean() > 0.2  # the ×3 really pushed many pixels out of gamut
    checked = shrunk & (result_chroma > 5)
    result_hue = np.arctan2(lab[..., 2], lab[..., 1])
    requested_hue = np.arctan2(requested[..., 1], requested[..., 0])
    hue_error = np.angle(np.exp(1j * (result_hue - requested_hue)))  # wrapped to ±π
    assert np.degrees(np.abs(hue_error[checked])).mean() < 2


def test_shrunk_colours_sit_on_the_gamut_boundary(astronaut):
    # "Just enough": a shrunk pixel has some channel at 0 or 1.
    lightness = to_lightness(astronaut)
    requested = chroma(astronaut / 255.0) * 3
    result = compose_with_lightness(lightness, requested)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unclipped_out = lab2rgb(np.dstack([lightness, requested]))
    shrunk = np.any(np.abs(result - unclipped_out) > 0.02, axis=-1)
    distance_to_edge = np.minimum(result, 1 - result).min(axis=-1)
    assert shrunk.any()
    assert np.percentile(distance_to_edge[shrunk], 95) < 0.01


def test_shrunk_chroma_is_the_largest_that_fits():
    # Against a bisection on skimage's own CIELAB -> linear sRGB, over L* and hue (chroma 150 is outside everywhere).
    lightness, hue = np.meshgrid(np.linspace(3, 97, 48), np.radians(np.arange(0, 360, 7.5)), indexing="ij")
    direction = np.dstack([np.cos(hue), np.sin(hue)])

    def fits(chroma_):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # negative Z, clipped by skimage as by EDN
            xyz = lab2xyz(np.dstack([lightness, direction * chroma_[..., None]]))
        linear = xyz @ rgb_from_xyz.T
        return ((linear >= -1e-5) & (linear <= 1 + 1e-5)).all(axis=-1)

    low, high = np.zeros_like(lightness), np.full_like(lightness, 150.0)
    for _ in range(30):
        middle = (low + high) / 2
        inside = fits(middle)
        low, high = np.where(inside, middle, low), np.where(inside, high, middle)
    result = compose_with_lightness(lightness.astype(np.float32), (direction * 150).astype(np.float32))
    lab = rgb2lab(result.astype(np.float64))
    np.testing.assert_allclose(lab[..., 0], lightness, atol=0.01)
    np.testing.assert_allclose(np.hypot(lab[..., 1], lab[..., 2]), low, atol=0.5)


def test_clipping_instead_would_break_lightness(astronaut):
    # Guards the test above: naive clipping of the same request does move L*.
    lightness = to_lightness(astronaut)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clipped = lab2rgb(np.dstack([lightness, chroma(astronaut / 255.0) * 3]))
    assert np.abs(lab_of(to_uint8(clipped))[..., 0] - lightness).mean() > 1.0


def test_single_out_of_gamut_colours():
    lightness = np.array([[50.0, 90.0, 20.0, 100.0, 0.0]])
    ab = np.array([[[200.0, 0.0], [0.0, 150.0], [-60.0, -160.0], [50.0, 50.0], [30.0, -30.0]]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # expected skimage warnings are suppressed
        result = compose_with_lightness(lightness, ab)
    lab = rgb2lab(result.astype(np.float64))
    np.testing.assert_allclose(lab[..., 0], lightness, atol=0.01)
    np.testing.assert_array_equal(to_uint8(result[0, 3:]), [[255] * 3, [0] * 3])  # white, black
    for i in range(3):
        requested_hue = np.arctan2(ab[0, i, 1], ab[0, i, 0])
        assert abs(np.arctan2(lab[0, i, 2], lab[0, i, 1]) - requested_hue) < 0.02


@pytest.mark.parametrize(
    ("lightness", "ab", "message"),
    [
        (np.full((2, 2), 50.0), np.zeros((2, 3, 2)), "shape"),
        (np.full((2, 2), 50.0), np.zeros((2, 2)), "shape"),
        (np.full((2, 2), 150.0), np.zeros((2, 2, 2)), r"\[0, 100\]"),
        (np.full((2, 2, 1), 50.0), np.zeros((2, 2, 2)), "lightness"),
        (np.full((2, 2), np.nan), np.zeros((2, 2, 2)), "finite"),
        (np.full((2, 2), 50.0), np.full((2, 2, 2), np.nan), "finite"),
    ],
)
def test_compose_rejects_bad_input(lightness, ab, message):
    with pytest.raises(EDNInputError, match=message):
        compose_with_lightness(lightness, ab)
