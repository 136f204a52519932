"""Every malformed call of EDNPipeline raises EDNInputError with a one-line message naming the problem.

The cases are generated from lists of bad values per argument; each is a distinct bad input a user could give.
A call that is refused must fail in the checks, before any denoising, so these run in milliseconds.
"""

import math

import numpy as np
import pytest
import torch
from conftest import seeded

from edn_pipeline import EDNPipeline
from edn_pipeline.errors import EDNInputError
from edn_pipeline.testing_utils import tiny_components

NOT_NUMBERS = ["5", None, [5], {"v": 5}, object(), b"5", 1j]
NON_FINITE = [math.nan, math.inf, -math.inf, np.float32("nan"), np.float64("inf")]

BAD_ARGUMENTS = {
    "num_inference_steps": [0, -1, 1.5, True, 1001, 10**6, np.float64(4.0), *NOT_NUMBERS, *NON_FINITE],
    "strength": [0, -0.1, 1.01, 2, True, *[v for v in NOT_NUMBERS if v is not None], *NON_FINITE],  # None: default
    "guidance_scale": [-1, -1e-9, True, *NOT_NUMBERS, *NON_FINITE],
    "eta": [-0.5, True, *NOT_NUMBERS, *NON_FINITE],
    "ccd_conditioning_scale": [True, *NOT_NUMBERS, *NON_FINITE],
    "num_images_per_prompt": [0, -2, 1.0, True, *NOT_NUMBERS],
    "temperature": [0, -1.0, True, *NOT_NUMBERS, *NON_FINITE],
    "vq_steps": [-1, 1, 2.0, True, "0"],
    "truncation_rate": [0, -0.5, 1.01, True, *[v for v in NOT_NUMBERS if v is not None], *NON_FINITE],
    "clip_skip": [-1, 2, 99, 1.0, True, "1"],
    "output_type": ["png", "PIL", "", None, 1, "latents"],
    "generator": [0, "seed", np.random.default_rng(0), [seeded(0), 1], [seeded(0), seeded(1)]],
    "prompt": [1, b"a photo", ["a", 2], {"a": 1}, "a \ud800 photo", ["ok", "lone \udfff"]],
    "negative_prompt": [1, ["a", None], "bad \ud800"],
    "prompt_embeds": [
        torch.zeros(1, 77),
        torch.zeros(1, 77, 31),
        torch.zeros(1, 4, 32, 2),
        torch.full((1, 77, 32), math.nan),
        np.zeros((1, 77, 32), np.float32),
        torch.zeros(1, 77, 32, device="meta"),
    ],
    "latents": [
        torch.zeros(1, 4, 3, 3),
        torch.full((1, 4, 5, 6), math.nan),
        torch.zeros(1, 4, 5, 6).to_sparse(),
        torch.zeros(1, 4, 5, 6, device="meta"),
        "noise",
    ],
    "callback_on_step_end_tensor_inputs": [["noise"], ["latents", "gray"]],
    "hints": [
        "red",
        5,
        [(1, 1)],
        [(1, 1, "#zzzzzz")],
        [(100, 1, "#ff0000")],
        [(-1, 1, "red")],
        [(1, 1, "red", -2)],
        [(1, 1, "rgb(300,0,0)")],
        [(1, 1, "hsl(400,50%,50%)")],
        [(1, 1, "hsl(0,150%,50%)")],
        [(1, 1, (256, 0, 0))],
        [(1, 1, (1.5, 0, 0))],
        [(math.nan, 1, "red")],
        [(1, math.inf, "red")],
        [{"x": 1, "y": 1}],
        [{"x": 1, "y": 1, "color": "red", "size": 3}],
        np.zeros((40, 48, 3), np.uint8),
        np.zeros((10, 10, 4), np.uint8),
    ],
}
BAD_IMAGES = [
    None,
    "no/such/file.png",
    5,
    [],
    np.zeros((0, 5), np.uint8),
    np.zeros((5, 5, 2), np.uint8),
    np.zeros((5, 5), np.int32),
    np.full((5, 5), math.nan, np.float32),
    np.full((5, 5), 2.0, np.float32),
    torch.zeros(5, 5, 5),
    torch.zeros(3, 5, 5, dtype=torch.int64),
    torch.zeros(3, 5, 5).to_sparse(),
    torch.zeros(3, 5, 5, device="meta"),
    np.zeros((2, 3, 4, 5, 6), np.uint8),
]
CASES = [(name, value) for name, values in BAD_ARGUMENTS.items() for value in values]


@pytest.fixture(scope="module")
def pipe() -> EDNPipeline:
    pipeline = EDNPipeline(**tiny_components())
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)


def refused(call) -> str:
    with pytest.raises(EDNInputError) as raised:
        call()
    message = str(raised.value)
    assert message and "\n" not in message and "Traceback" not in message
    return message


def test_there_are_many_cases():
    assert len(CASES) + len(BAD_IMAGES) >= 150


@pytest.mark.parametrize(("name", "value"), CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(CASES)])
def test_bad_argument_is_one_line_error_naming_it(pipe, photo, name, value):
    kwargs = {"num_inference_steps": 2, "strength": 1.0, name: value}
    if name == "negative_prompt":
        kwargs["guidance_scale"] = 5.0
    message = refused(lambda: pipe(photo, **kwargs))
    assert name in message or name == "hints" or name.split("_")[0] in message.lower()


@pytest.mark.parametrize("image", BAD_IMAGES, ids=[f"image-{i}" for i in range(len(BAD_IMAGES))])
def test_bad_image_is_one_line_error(pipe, image):
    refused(lambda: pipe(image, num_inference_steps=2))


def test_numpy_numbers_are_numbers(pipe, photo):
    with_numpy = pipe(
        photo,
        num_inference_steps=np.int64(2),
        guidance_scale=np.float32(5.0),
        strength=1.0,
        generator=seeded(0),
        output_type="np",
    ).images
    with_python = pipe(
        photo, num_inference_steps=2, guidance_scale=5.0, strength=1.0, generator=seeded(0), output_type="np"
    ).images
    np.testing.assert_array_equal(with_numpy, with_python)


def test_clip_skip_one_uses_the_second_to_last_layer(pipe, photo):
    """clip_skip=1 (a valid value) runs, and differs from no skip: the prompt is encoded by fewer layers."""
    skipped = pipe(photo, num_inference_steps=2, strength=1.0, clip_skip=1, generator=seeded(0), output_type="np")
    plain = pipe(photo, num_inference_steps=2, strength=1.0, generator=seeded(0), output_type="np")
    assert not np.array_equal(skipped.images, plain.images)


def test_a_callback_that_returns_nothing_is_named(pipe, photo):
    message = refused(
        lambda: pipe(photo, num_inference_steps=2, strength=1.0, callback_on_step_end=lambda *args: None)
    )
    assert "callback_on_step_end must return a dict" in message


def test_exploding_guidance_names_its_cause(pipe, photo):
    message = refused(lambda: pipe(photo, num_inference_steps=2, strength=1.0, guidance_scale=1e38))
    assert "NaN or infinite latents" in message and "guidance_scale" in message


@pytest.mark.parametrize("where", ["missing", "empty", "hub-offline"])
def test_loading_what_is_not_a_pipeline_says_what_is_needed(tmp_path, where):
    name = {"missing": tmp_path / "nothing", "empty": tmp_path, "hub-offline": "someone/not-cached-here"}[where]
    message = refused(lambda: EDNPipeline.from_pretrained(name))
    assert "model_index.json" in message and "Hub id" in message
