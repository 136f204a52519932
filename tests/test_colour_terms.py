"""Basic colour terms of a photo, for captions that name its colours."""

import numpy as np
import pytest
from skimage import data
from skimage.color import rgb2lab

from edn_pipeline.colour_terms import (
    BASIC_COLOUR_TERMS,
    CHROMATIC_TERMS,
    MIN_SHARE,
    colour_caption,
    colour_terms,
    named_terms,
    term_chroma,
)
from edn_pipeline.errors import EDNInputError

BLUE, GREEN, RED, WHITE, GRAY = (40, 90, 210), (50, 160, 60), (210, 25, 35), (245, 245, 245), (128, 128, 128)


def _image(*parts, size=(40, 50)):
    """An image of vertical bands: ``parts`` are (colour, share of the width) pairs."""
    h, w = size
    image = np.zeros((h, w, 3), np.uint8)
    start = 0
    for colour, share in parts:
        stop = min(w, start + round(share * w))
        image[:, start:stop] = colour
        start = stop
    assert start == w
    return image


def test_the_eleven_basic_terms():
    assert len(BASIC_COLOUR_TERMS) == 11 and len(set(BASIC_COLOUR_TERMS)) == 11
    assert set(BASIC_COLOUR_TERMS) - set(CHROMATIC_TERMS) == {"black", "white", "gray"}
    assert set(CHROMATIC_TERMS) == {"red", "orange", "yellow", "green", "blue", "purple", "pink", "brown"}


def test_two_colours_are_named_largest_first():
    assert colour_terms(_image((BLUE, 0.6), (GREEN, 0.4))) == ["blue", "green"]
    assert colour_terms(_image((BLUE, 0.3), (GREEN, 0.7))) == ["green", "blue"]


@pytest.mark.parametrize("colour, term", [(GRAY, "gray"), (WHITE, "white"), ((12, 12, 12), "black")])
def test_an_achromatic_photo_gets_its_achromatic_term(colour, term):
    assert colour_terms(_image((colour, 1.0))) == [term]


def test_chromatic_terms_are_preferred_over_a_larger_achromatic_area():
    assert colour_terms(_image((WHITE, 0.7), (RED, 0.3))) == ["red"]
    assert colour_terms(_image((GRAY, 0.5), (WHITE, 0.3), (BLUE, 0.2))) == ["blue"]
    # Below MIN_SHARE a chromatic colour is not named, and the achromatic majority is.
    assert MIN_SHARE > 0.04
    assert colour_terms(_image((WHITE, 0.96), (RED, 0.04))) == ["white"]


def test_at_most_max_terms_and_min_share_are_respected():
    three = _image((RED, 0.4), (BLUE, 0.35), (GREEN, 0.25))
    assert colour_terms(three) == ["red", "blue"]
    assert colour_terms(three, max_terms=3) == ["red", "blue", "green"]
    assert colour_terms(three, min_share=0.3, max_terms=3) == ["red", "blue"]


def test_large_photos_are_classified_on_a_thumbnail():
    big = np.zeros((600, 800, 3), np.uint8)
    big[:, :500] = BLUE
    big[:, 500:] = GREEN
    assert colour_terms(big) == ["blue", "green"]
    terms = colour_terms(data.coffee())
    assert 1 <= len(terms) <= 2 and set(terms) <= set(BASIC_COLOUR_TERMS)


def test_colour_caption_formats():
    caption = colour_caption("a photo of a goldfinch", ["yellow", "green"])
    assert caption == "a photo of a goldfinch, mostly yellow and green"
    assert colour_caption("a photo of the sea", ["blue"]) == "a photo of the sea, mostly blue"
    assert colour_caption("a photo of a cat", []) == "a photo of a cat"


def test_term_chroma_points_the_way_of_the_colour():
    blue = term_chroma("blue")
    assert blue.shape == (2,) and blue[1] < -20  # blue: negative b*
    # Independent reference: skimage's CIELAB of pure sRGB blue points the same way in the a*b* plane.
    reference = rgb2lab(np.array([[[0.0, 0.0, 1.0]]]))[0, 0, 1:]
    assert reference[1] < 0
    assert blue @ reference / np.linalg.norm(blue) / np.linalg.norm(reference) > 0.9
    assert term_chroma("yellow")[1] > 20 and term_chroma("red")[0] > 20 and term_chroma("green")[0] < -20
    assert np.abs(term_chroma("gray")).max() < 1
    blue[:] = 0  # a copy: the prototypes stay as they are
    assert term_chroma("blue")[1] < -20


def test_unknown_terms_and_bad_arrays_raise():
    with pytest.raises(EDNInputError, match="unknown colour term 'teal'"):
        term_chroma("teal")
    for bad in (
        np.zeros((8, 8, 3), np.float32),  # not uint8
        np.zeros((8, 8), np.uint8),  # no channels
        np.zeros((8, 8, 4), np.uint8),  # RGBA
        np.zeros((0, 8, 3), np.uint8),  # empty
    ):
        with pytest.raises(EDNInputError, match="uint8 RGB array"):
            colour_terms(bad)


@pytest.mark.parametrize(
    ("prompt", "terms"),
    [
        ("a photo, mostly Blue and green", ["blue", "green"]),
        ("colored photo", []),  # "colored" is not "red"
        ("a reddish, greyish wall; grey sky, red door, red roof", ["gray", "red"]),
        ("an orange on a plate", ["orange"]),
        ("", []),
    ],
)
def test_named_terms_are_whole_words_in_order_each_once(prompt, terms):
    assert named_terms(prompt) == terms
