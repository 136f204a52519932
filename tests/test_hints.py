"""Tests for edn_pipeline.hints: parsing, propagation, lightness and the condition stack."""

import colorsys

import numpy as np
import pytest
from PIL import Image
from skimage import data, transform
from skimage.metrics import peak_signal_noise_ratio

from edn_pipeline.errors import EDNInputError
from edn_pipeline.hints import (
    CONDITION_CHANNELS,
    HintPoint,
    hint_condition,
    parse_hints,
    render_hints,
)


def two_regions(h=48, w=96):
    """Left half 0.2, right half 0.8, sharp vertical edge at column w // 2."""
    gray = np.full((h, w), 0.2, np.float32)
    gray[:, w // 2 :] = 0.8
    return gray


def camera(h, w):
    return transform.resize(data.camera(), (h, w), anti_aliasing=True).astype(np.float32)


def render(gray, hints, image_size=None):
    image_size = image_size or (gray.shape[1], gray.shape[0])
    return render_hints(gray, parse_hints(hints, image_size), image_size)


def hls(rgb):
    return colorsys.rgb_to_hls(*(float(c) for c in rgb))


def hue_distance(a, b):
    """Distance between two hues in [0, 1) on the colour circle."""
    return min(abs(a - b), 1 - abs(a - b))


# --- propagation and lightness -------------------------------------------------


def test_red_hint_colours_its_region_with_red_hue_and_input_lightness():
    gray = two_regions()
    hint_rgb, confidence = render(gray, [(20, 24, "red")])
    assert confidence.dtype == np.float32 and hint_rgb.dtype == np.float32
    assert confidence[24, 20] == 1.0
    # Colour spreads over the whole flat region, far beyond the 1-pixel seed disk.
    for y, x in [(2, 2), (24, 40), (45, 10), (10, 47)]:
        h, l, s = hls(hint_rgb[y, x])
        assert hue_distance(h, 0.0) < 0.02
        assert l == pytest.approx(0.2, abs=1e-3)
        assert s == pytest.approx(1.0, abs=0.02)


def test_confidence_fades_with_distance_and_drops_across_an_edge():
    gray = two_regions()
    _, confidence = render(gray, [(44.5, 24, "red")])  # 3.5 pixels left of the edge at column 48
    assert confidence[24, 44] == 1.0
    assert 1.0 > confidence[24, 40] > confidence[24, 30] > confidence[24, 10] > 0
    assert confidence[24, 40] > 5 * confidence[24, 49]  # as far from the hint, but across the edge


def test_hints_either_side_of_an_edge_keep_their_own_colours():
    gray = two_regions()
    hint_rgb, _ = render(gray, [(20, 24, "red"), (76, 24, "blue")])
    for x in (2, 30, 45):
        assert hue_distance(hls(hint_rgb[5, x])[0], 0.0) < 0.05
    for x in (51, 70):
        assert hue_distance(hls(hint_rgb[5, x])[0], 2 / 3) < 0.05


def test_confidence_follows_a_gentle_gradient_but_drops_at_a_step():
    gray = np.tile(np.linspace(0.30, 0.36, 96, dtype=np.float32), (48, 1))  # a gentle left-to-right ramp
    gray[:, 64:] += 0.3  # and a step a third of the way from the right
    _, confidence = render(gray, [(5, 24, "green")])
    assert confidence[:, 56:60].mean() > 5 * confidence[:, 68:72].mean()


def test_hints_of_a_real_photo_bring_its_colours():
    """40 points with the photo's own colours: the hint map is far closer to the photo than its gray is."""
    photo = transform.resize(data.coffee(), (48, 64), anti_aliasing=True).astype(np.float32)
    gray = photo @ np.float32([0.2126, 0.7152, 0.0722])
    rng = np.random.default_rng(0)
    points = [
        (x + 0.5, y + 0.5, tuple(int(c) for c in np.round(photo[y, x] * 255)))
        for x, y in zip(rng.integers(0, 64, 40), rng.integers(0, 48, 40))
    ]
    hint_rgb, confidence = render(gray, points)
    gray_rgb = np.repeat(gray[..., None], 3, axis=-1)
    assert (
        peak_signal_noise_ratio(photo, hint_rgb, data_range=1)
        > peak_signal_noise_ratio(photo, gray_rgb, data_range=1) + 3
    )
    # Every hint colour has the photo's own gray as its HSL lightness (colorsys as reference).
    for y in range(0, 48, 7):
        for x in range(0, 64, 9):
            assert hls(hint_rgb[y, x])[1] == pytest.approx(float(gray[y, x]), abs=1e-3)


@pytest.mark.parametrize(
    "colour",
    [
        (255, 0, 0),
        (20, 40, 200),
        (0, 128, 0),
        (250, 240, 10),
        (128, 128, 128),
        (255, 255, 255),
        (0, 0, 0),
        (90, 10, 60),
    ],
)
def test_hinted_colour_keeps_hint_hue_and_saturation(colour):
    gray = np.full((16, 16), 0.3, np.float32)
    hint_rgb, confidence = render(gray, [(8, 8, colour)])
    h, _, s = colorsys.rgb_to_hls(*(c / 255 for c in colour))
    expected = colorsys.hls_to_rgb(h, 0.3, s)
    seed = confidence == 1
    assert seed[8, 8]
    np.testing.assert_allclose(hint_rgb[seed], np.broadcast_to(expected, hint_rgb[seed].shape), atol=1e-5)


def test_render_is_deterministic():
    gray = camera(48, 48)
    first = render(gray, [(5, 5, "red"), (30, 40, "green")])
    second = render(gray, [(5, 5, "red"), (30, 40, "green")])
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


# --- points: colours, radius, scaling -------------------------------------------


def test_colour_spellings_render_identically():
    gray = camera(40, 40)
    spellings = ["#ff0000", "#f00", "#ff000080", "red", (255, 0, 0), [255, 0, 0], np.array([255, 0, 0], np.uint8)]
    reference = render(gray, [(12, 20, spellings[0])])
    for colour in spellings[1:]:
        result = render(gray, [(12, 20, colour)])
        np.testing.assert_array_equal(result[0], reference[0])
        np.testing.assert_array_equal(result[1], reference[1])
    as_dict = render(gray, [{"x": 12, "y": 20, "color": "red"}])
    np.testing.assert_array_equal(as_dict[0], reference[0])


def test_parse_points_returns_hint_points():
    points = parse_hints(
        [(1, 2, "red"), (3.5, 4, (0, 255, 0), 7), {"x": 5, "y": 6, "color": "#00f", "radius": 2.5}], (10, 10)
    )
    assert points == [
        HintPoint(1.0, 2.0, (255, 0, 0)),
        HintPoint(3.5, 4.0, (0, 255, 0), 7.0),
        HintPoint(5.0, 6.0, (0, 0, 255), 2.5),
    ]
    assert all(type(c) is int for p in points for c in p.rgb)
    assert parse_hints(points, (10, 10)) == points  # HintPoints pass through
    with pytest.raises(AttributeError):
        points[0].x = 3


def test_radius_enlarges_the_seed_disk():
    gray = camera(64, 64)
    _, small = render(gray, [(32, 32, "red", 0.5)])
    _, large = render(gray, [(32, 32, "red", 12)])
    yy, xx = np.mgrid[:64, :64] + 0.5
    disk = (xx - 32) ** 2 + (yy - 32) ** 2 <= 12**2
    assert np.all(large[disk] == 1)
    assert small.sum() < large.sum()
    assert small[32, 32] == 1  # even a tiny radius covers the pixel under the point


def test_coordinates_are_scaled_to_the_working_size():
    gray = two_regions(32, 64)  # working 64x32 for a 200x100 input
    _, right = render(gray, [(199, 50, "red")], image_size=(200, 100))
    assert right[16, 63] == 1
    assert right[:, :32].max() < 0.05
    _, left = render(gray, [(0, 0, "red")], image_size=(200, 100))
    assert left[0, 0] == 1
    assert left[:, 32:].max() < 0.05


def test_radius_is_scaled_per_axis_when_the_aspect_changes():
    # A 100x100 input squashed to 64x32: radius 20 becomes 12.8 across and 6.4 down.
    gray = np.full((32, 64), 0.2, np.float32)
    gray[16:] = 0.8  # an edge below the hint that a 12.8-pixel vertical radius would cross
    _, mask = render(gray, [(50, 25, "red", 20)], image_size=(100, 100))
    yy, xx = np.mgrid[:32, :64] + 0.5
    ellipse = ((xx - 32) / 12.8) ** 2 + ((yy - 8) / 6.4) ** 2 <= 1
    assert np.all(mask[ellipse] == 1)
    assert mask[16:].max() < 0.1


# --- RGBA hint images -----------------------------------------------------------------


def test_single_pixel_stroke_survives_downscaling():
    rgba = np.zeros((800, 1000, 4), np.uint8)
    rgba[300, 700] = (0, 200, 0, 255)
    gray = camera(40, 50)
    hint_rgb, mask = render(gray, rgba, image_size=(1000, 800))
    assert mask[15, 35] == 1  # (700, 300) * 0.05
    assert 0 < mask.mean() < 0.2
    for y, x in zip(*np.nonzero(mask)):
        h, l, _ = hls(hint_rgb[y, x])
        assert h == pytest.approx(1 / 3, abs=1e-3)
        assert l == pytest.approx(float(gray[y, x]), abs=1e-3)


def test_faint_alpha_still_marks_a_hint():
    rgba = np.zeros((400, 400, 4), np.uint8)
    rgba[100, 100] = (255, 0, 0, 1)
    _, mask = render(camera(20, 20), rgba, image_size=(400, 400))
    assert mask[5, 5] == 1


def test_transparent_pixels_do_not_tint_the_stroke_colour():
    # Transparent pixels are blue; only the opaque red ones may count (premultiplied resize).
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 2] = 255
    rgba[9:11, 9:11] = (255, 0, 0, 255)  # a quarter of working pixel (2, 2)
    gray = np.full((16, 16), 0.4, np.float32)
    hint_rgb, mask = render(gray, rgba, image_size=(64, 64))
    assert mask[2, 2] == 1
    for y, x in zip(*np.nonzero(mask)):
        assert hls(hint_rgb[y, x])[0] == pytest.approx(0.0, abs=1e-3)


def test_hint_image_at_input_size_keeps_stroke_colours():
    gray = camera(32, 32)
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[4, 4] = (255, 0, 0, 255)
    rgba[28, 28] = (0, 0, 255, 128)
    hint_rgb, mask = render(gray, rgba)
    assert mask[4, 4] == 1 and mask[28, 28] == 1
    assert hls(hint_rgb[4, 4])[0] == pytest.approx(0.0, abs=1e-3)
    assert hls(hint_rgb[28, 28])[0] == pytest.approx(2 / 3, abs=1e-3)


def test_pil_hint_images_are_converted_to_rgba():
    rgba = np.zeros((10, 20, 4), np.uint8)
    rgba[2, 3] = (10, 20, 30, 255)
    parsed = parse_hints(Image.fromarray(rgba, "RGBA"), (20, 10))
    assert parsed.shape == (10, 20, 4) and parsed.dtype == np.uint8
    np.testing.assert_array_equal(parsed, rgba)

    la = Image.new("LA", (20, 10), (0, 0))
    la.putpixel((3, 2), (200, 255))
    parsed = parse_hints(la, (20, 10))
    assert tuple(parsed[2, 3]) == (200, 200, 200, 255) and parsed[..., 3].sum() == 255

    palette = Image.new("P", (20, 10), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    palette.putpixel((3, 2), 1)
    palette.info["transparency"] = 0
    parsed = parse_hints(palette, (20, 10))
    assert tuple(parsed[2, 3]) == (255, 0, 0, 255) and parsed[..., 3].sum() == 255


def test_parse_copies_the_hint_array():
    rgba = np.zeros((4, 4, 4), np.uint8)
    parsed = parse_hints(rgba, (4, 4))
    rgba[0, 0, 3] = 255
    assert parsed[0, 0, 3] == 0


# --- no hints and the condition ----------------------------------------------------------------


@pytest.mark.parametrize("hints", [None, [], ()])
def test_no_hints(hints):
    assert parse_hints(hints, (30, 20)) is None
    hint_rgb, mask = render_hints(np.full((12, 18), 0.5, np.float32), parse_hints(hints, (30, 20)), (30, 20))
    assert hint_rgb.shape == (12, 18, 3) and mask.shape == (12, 18)
    assert hint_rgb.dtype == np.float32 and mask.dtype == np.float32
    assert not hint_rgb.any() and not mask.any()


def test_fully_transparent_hint_image_gives_zeros():
    hint_rgb, mask = render(camera(16, 16), np.zeros((16, 16, 4), np.uint8))
    assert not hint_rgb.any() and not mask.any()


def test_hint_condition_stacks_gray_hints_and_mask():
    gray = camera(24, 32)
    hint_rgb, mask = render(gray, [(5, 5, "orange")])
    condition = hint_condition(gray, hint_rgb, mask)
    assert CONDITION_CHANNELS == 7
    assert condition.shape == (24, 32, CONDITION_CHANNELS) and condition.dtype == np.float32
    for c in range(3):
        np.testing.assert_array_equal(condition[..., c], gray)
    np.testing.assert_array_equal(condition[..., 3:6], hint_rgb)
    np.testing.assert_array_equal(condition[..., 6], mask)
    with pytest.raises(ValueError, match="hint_rgb"):
        hint_condition(gray, hint_rgb[:-1], mask)


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "hints, message",
    [
        ([(10, 10, "red"), (5, 5, "red"), (700, 10, "red")], r"^hint 2 at \(700, 10\) is outside the 640×480 image$"),
        ([(-1, 10, "red")], r"^hint 0 at \(-1, 10\) is outside the 640×480 image$"),
        ([(1, 1, "red"), (640, 10, "red")], r"^hint 1 at \(640, 10\) is outside"),
        ([(10, 480, "red")], r"^hint 0 at \(10, 480\) is outside"),
        ([("a", 10, "red")], r"^hint 0: x must be a finite number, got 'a'$"),
        ([(1, 1, "red"), (10, float("nan"), "red")], r"^hint 1: y must be a finite number, got nan$"),
        ([(float("inf"), 10, "red")], r"^hint 0: x must be a finite number"),
        ([(True, 10, "red")], r"^hint 0: x must be a finite number"),
        ([(10, None, "red")], r"^hint 0: y must be a finite number"),
        ([(10, 10, "blurple")], r"^hint 0: cannot parse colour 'blurple'$"),
        ([(1, 1, "red"), (10, 10, (300, 0, 0))], r"^hint 1: colour channel 300 is outside 0\.\.255$"),
        ([(10, 10, (0, -1, 0))], r"^hint 0: colour channel -1 is outside 0\.\.255$"),
        ([(10, 10, (0.5, 0, 0))], r"^hint 0: colour channels must be integers 0\.\.255, got 0\.5$"),
        ([(10, 10, (255, 0))], r"^hint 0: colour must be a colour string or three integers"),
        ([(10, 10, None)], r"^hint 0: colour must be"),
        ([(10, 10)], r"^hint 0: expected \(x, y, colour\) or \(x, y, colour, radius\), got 2 values$"),
        ([(1, 1, "red"), (1, 1, "red"), (1, 1, "red"), (10, 10, "red", 2, 3)], r"^hint 3: expected .* got 5 values$"),
        ([(10, 10, "red", 0)], r"^hint 0: radius must be > 0, got 0$"),
        ([(10, 10, "red", -2)], r"^hint 0: radius must be > 0, got -2$"),
        ([(10, 10, "red", float("nan"))], r"^hint 0: radius must be a finite number, got nan$"),
        ([(10, 10, "red", float("inf"))], r"^hint 0: radius must be a finite number"),
        ([{"x": 1, "y": 2}], r"^hint 0: missing key\(s\) 'color'$"),
        ([{"x": 1, "y": 2, "colour": "red"}], r"^hint 0: unknown key\(s\) 'colour'; expected 'x', 'y', 'color'"),
        ([(1, 1, "red"), "red"], r"^hint 1: expected a tuple \(x, y, colour\[, radius\]\) or a dict, got str$"),
        ("red", r"^hints must be a list of points or an RGBA hint image, got str$"),
        (42, r"^hints must be .* got int$"),
        ({"x": 1, "y": 2, "color": "red"}, r"^hints must be .* got dict$"),
        (np.zeros((50, 100, 4), np.uint8), r"^hint image is 100×50 but the input image is 640×480$"),
        (Image.new("RGBA", (100, 50)), r"^hint image is 100×50 but the input image is 640×480$"),
        (Image.new("RGB", (640, 480)), r"^hint image has mode RGB without alpha"),
        (Image.new("L", (640, 480)), r"^hint image has mode L without alpha"),
        (
            np.zeros((480, 640, 3), np.uint8),
            r"^hint image array must be uint8 \(H, W, 4\) RGBA, got uint8 array of shape \(480, 640, 3\)$",
        ),
        (np.zeros((480, 640, 4), np.float32), r"^hint image array must be uint8 .* got float32"),
        (np.zeros((480, 640), np.uint8), r"^hint image array must be uint8"),
    ],
)
def test_bad_hints_raise_edn_input_error(hints, message):
    with pytest.raises(EDNInputError, match=message) as info:
        parse_hints(hints, (640, 480))
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
    # No chained numpy/PIL traceback is shown to the user.
    assert info.value.__cause__ is None
    assert info.value.__context__ is None or info.value.__suppress_context__
