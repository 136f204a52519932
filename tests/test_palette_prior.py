"""The colour-word prior: what its weights mean, and that the pipeline places a prompt's colour words with it only
where the image has no hints."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from skimage.color import rgb2lab

from edn_pipeline import EDNPipeline, PalettePrior
from edn_pipeline.colour_terms import BASIC_COLOUR_TERMS, term_chroma
from edn_pipeline.hints import PALETTE_CONFIDENCE, hint_condition, relight
from edn_pipeline.testing_utils import tiny_components

GRAY = np.asarray(Image.fromarray(data.camera()).resize((48, 40)), np.float32) / 255


def prior(preferred: list[str]) -> PalettePrior:
    """A small prior whose logits rank ``preferred`` first (in that order) at every pixel, at saturation 1."""
    model = PalettePrior(channels=8, dilations=(1, 2)).eval()
    with torch.no_grad():
        model.conv_out.weight.zero_()
        model.conv_out.bias.zero_()
        for rank, term in enumerate(preferred):
            model.conv_out.bias[BASIC_COLOUR_TERMS.index(term)] = 40.0 - 10 * rank
    return model


def hue(ab: np.ndarray) -> np.ndarray:
    return np.arctan2(ab[..., 1], ab[..., 0])


def test_a_named_term_the_network_picks_colours_every_pixel_in_its_hue_on_the_gray():
    colours = prior(["blue"]).hint_colours(GRAY, ["blue"])
    lab = rgb2lab(colours)
    gray_lab = rgb2lab(np.repeat(GRAY[..., None], 3, -1))
    np.testing.assert_allclose(lab[..., 0], gray_lab[..., 0], atol=0.5)  # the gray's own L*
    chromatic = np.hypot(lab[..., 1], lab[..., 2]) > 5  # near black and white sRGB leaves no room for chroma
    assert chromatic.mean() > 0.5
    np.testing.assert_allclose(hue(lab[chromatic][:, 1:]), hue(term_chroma("blue")), atol=0.05)


def test_a_term_the_prompt_does_not_name_is_never_used():
    # The network prefers blue, then green: a prompt naming only green gets green, one naming none gets the gray.
    model = prior(["blue", "green"])
    lab = rgb2lab(model.hint_colours(GRAY, ["green"]))
    chromatic = np.hypot(lab[..., 1], lab[..., 2]) > 5
    np.testing.assert_allclose(hue(lab[chromatic][:, 1:]), hue(term_chroma("green")), atol=0.05)
    np.testing.assert_allclose(model.hint_colours(GRAY, []), np.repeat(GRAY[..., None], 3, -1), atol=0.02)


def test_black_white_and_gray_take_colour_away_whatever_the_weights():
    model = prior(["gray", "black", "white"])
    with torch.no_grad():
        model.conv_out.bias[len(BASIC_COLOUR_TERMS) :] = 5.0  # the highest saturation
    colours = model.hint_colours(GRAY, ["gray", "black", "white"])
    np.testing.assert_allclose(colours, np.repeat(GRAY[..., None], 3, -1), atol=0.02)


@pytest.fixture
def pipe():
    pipe = EDNPipeline(**tiny_components(), palette_prior=prior(["blue"]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def run(pipe, **kwargs):
    return pipe(GRAY, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np", **kwargs)


def test_a_prompt_naming_a_colour_puts_the_priors_map_in_the_condition(pipe):
    seen = []
    pipe.ccd.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["controlnet_cond"]), with_kwargs=True
    )
    run(pipe, prompt="a photo, mostly blue")
    gray = pipe.image_processor.preprocess([GRAY], [None]).gray[0, 0].numpy()
    colours = pipe.palette_prior.hint_colours(gray, ["blue"])
    hint_rgb = relight(colours.reshape(-1, 3), gray.ravel()).reshape(colours.shape)
    expected = hint_condition(gray, hint_rgb, np.full(gray.shape, PALETTE_CONFIDENCE, np.float32))
    np.testing.assert_allclose(seen[0][0].numpy(), expected.transpose(2, 0, 1), atol=1e-6)


def test_without_a_chromatic_word_or_with_hints_the_prior_changes_nothing(pipe):
    plain = EDNPipeline(**{name: getattr(pipe, name) for name in tiny_components()})
    plain.set_progress_bar_config(disable=True)
    hints = [(20, 14, "#d02020")]
    np.testing.assert_array_equal(run(pipe, prompt="a photo").images, run(plain, prompt="a photo").images)
    # black, white and gray alone have no colour to place: "a black and white photo" describes the input
    for prompt in ("a black and white photo", "a photo, mostly gray"):
        np.testing.assert_array_equal(run(pipe, prompt=prompt).images, run(plain, prompt=prompt).images)
    # the terms are read from the prompt's text: embeddings carry none
    embeds, negative = pipe.encode_prompt("a photo, mostly blue", torch.device("cpu"), 1, True)
    np.testing.assert_array_equal(
        run(pipe, prompt_embeds=embeds, negative_prompt_embeds=negative).images,
        run(plain, prompt_embeds=embeds, negative_prompt_embeds=negative).images,
    )
    np.testing.assert_array_equal(
        run(pipe, prompt="a photo, mostly blue", hints=hints).images,
        run(plain, prompt="a photo, mostly blue", hints=hints).images,
    )
    assert (
        np.abs(
            run(pipe, prompt="a photo, mostly blue").images - run(plain, prompt="a photo, mostly blue").images
        ).max()
        > 0.01
    )


def test_the_prior_is_saved_and_loaded_with_the_pipeline(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    loaded = EDNPipeline.from_pretrained(tmp_path)
    loaded.set_progress_bar_config(disable=True)
    assert isinstance(loaded.palette_prior, PalettePrior)
    np.testing.assert_array_equal(run(loaded, prompt="mostly blue").images, run(pipe, prompt="mostly blue").images)
