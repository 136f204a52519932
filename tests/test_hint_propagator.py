"""The learned hint propagator: what its weights mean, and that the pipeline and the training data spread hints
with it when a model has one."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data
from skimage.color import rgb2lab

from edn_pipeline import EDNPipeline, HintPropagator
from edn_pipeline.hints import hint_condition, parse_hints, propagate_hints, render_hints
from edn_pipeline.testing_utils import tiny_components
from edn_pipeline.training.data import TrainingExampleTransform

GRAY = np.asarray(Image.fromarray(data.camera()).resize((48, 40)), np.float32) / 255


def propagator(neutral: float, seed: int = 0) -> HintPropagator:
    """A small propagator whose "no hint applies" logit is ``neutral`` everywhere (and embeddings all zero)."""
    torch.manual_seed(seed)
    model = HintPropagator(channels=8, embedding_dim=4, dilations=(1, 2)).eval()
    with torch.no_grad():
        model.conv_out.weight.zero_()
        model.conv_out.bias.zero_()
        model.conv_out.bias[-1] = neutral
    return model


def seeds(points):
    seed, seed_rgb = np.zeros(GRAY.shape, bool), np.zeros(GRAY.shape + (3,), np.float32)
    for (y, x), rgb in points:
        seed[y, x], seed_rgb[y, x] = True, np.asarray(rgb) / 255
    return seed, seed_rgb


def test_one_hint_alike_everywhere_gives_every_pixel_its_chroma_on_the_gray():
    seed, seed_rgb = seeds([((10, 12), (40, 90, 200))])
    colours = propagator(neutral=-50.0).hint_colours(GRAY, seed, seed_rgb)
    lab, hint = rgb2lab(colours), rgb2lab(seed_rgb[10, 12][None, None])[0, 0]
    inside = (colours > 0.01).all(-1) & (colours < 0.99).all(-1)  # where sRGB clipping leaves L* alone
    np.testing.assert_allclose(lab[inside][:, 1:], np.broadcast_to(hint[1:], lab[inside][:, 1:].shape), atol=0.5)
    np.testing.assert_allclose(lab[inside][:, 0], rgb2lab(np.repeat(GRAY[..., None], 3, -1))[inside][:, 0], atol=0.5)


def test_with_no_hint_alike_the_colours_stay_the_gray():
    seed, seed_rgb = seeds([((10, 12), (200, 40, 40)), ((30, 40), (40, 200, 40))])
    colours = propagator(neutral=50.0).hint_colours(GRAY, seed, seed_rgb)
    np.testing.assert_allclose(colours, np.repeat(GRAY[..., None], 3, -1), atol=2e-3)


def test_nearer_hints_weigh_more():
    seed, seed_rgb = seeds([((5, 5), (220, 30, 30)), ((35, 43), (30, 180, 30))])  # red (a* > 0), green (a* < 0)
    a_star = rgb2lab(propagator(neutral=-50.0).hint_colours(GRAY, seed, seed_rgb))[..., 1]
    assert a_star[6, 6] > 0 > a_star[34, 42]


def test_the_hint_map_is_the_propagators_colours_relit_with_the_seeds_own():
    seed, seed_rgb = seeds([((10, 12), (40, 90, 200))])
    model = propagator(neutral=0.0)
    with_model, confidence = propagate_hints(GRAY, seed, seed_rgb, model)
    levin, levin_confidence = propagate_hints(GRAY, seed, seed_rgb)
    np.testing.assert_array_equal(confidence, levin_confidence)  # the confidence does not depend on it
    colours = model.hint_colours(GRAY, seed, seed_rgb)
    colours[seed] = seed_rgb[seed]
    expected, _ = propagate_hints(GRAY, np.ones_like(seed), colours)  # every pixel a seed: relit as it is
    np.testing.assert_allclose(with_model, expected, atol=1e-6)
    assert np.abs(with_model - levin).max() > 0.05


@pytest.fixture
def pipe():
    pipe = EDNPipeline(**tiny_components(), hint_propagator=propagator(neutral=-2.0))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_pipeline_spreads_hints_with_its_propagator_and_saves_it(pipe, tmp_path):
    hints = [(20, 14, "#3060c0")]
    inputs = pipe.image_processor.preprocess([GRAY], [hints], hint_propagator=pipe.hint_propagator)
    gray = inputs.gray[0, 0].numpy()
    size = (GRAY.shape[1], GRAY.shape[0])
    expected = hint_condition(gray, *render_hints(gray, parse_hints(hints, size), size, pipe.hint_propagator))
    np.testing.assert_array_equal(inputs.condition[0].numpy(), expected.transpose(2, 0, 1))

    seen = []
    pipe.hint_propagator.register_forward_hook(lambda *args: seen.append(True))
    pipe(GRAY, hints=hints, num_inference_steps=2, generator=torch.Generator().manual_seed(0))
    assert seen

    pipe.save_pretrained(tmp_path)
    loaded = EDNPipeline.from_pretrained(tmp_path).hint_propagator
    assert isinstance(loaded, HintPropagator)
    for name, value in pipe.hint_propagator.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], value)


def test_training_examples_spread_their_hints_with_the_models_propagator(pipe):
    photo = np.asarray(Image.fromarray(data.astronaut()).resize((32, 32)))
    common = dict(resolution=32, seed=0, no_hint_prob=0.0, point_hint_prob=1.0, max_hint_points=1)
    plain = TrainingExampleTransform(**common).transform_example(photo)["conditioning_pixel_values"].numpy()
    example = TrainingExampleTransform(**common, hint_propagator=pipe.hint_propagator).transform_example(photo)
    condition = example["conditioning_pixel_values"].numpy()
    np.testing.assert_array_equal(condition[6], plain[6])  # the same point, the same confidence
    # One point: a disk of pixels around the clicked one, all in its colour (as the pipeline rasterises a click).
    seed = condition[6] == 1.0
    pixels = np.argwhere(seed)
    ((y, x),) = [p for p in pixels if np.abs(pixels - p).sum(axis=1).max() <= 1]
    seed_rgb = np.where(seed[..., None], photo[y, x] / 255, 0).astype(np.float32)
    gray = (example["gray_values"][0].numpy() + 1) / 2
    expected = hint_condition(gray, *propagate_hints(gray, seed, seed_rgb, pipe.hint_propagator))
    np.testing.assert_allclose(condition, expected.transpose(2, 0, 1), atol=1e-5)
    assert np.abs(condition - plain).max() > 0.05  # and not Levin's
