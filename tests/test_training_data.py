"""Training data: image folders / datasets, the per-example transform, skipping unreadable images."""

import colorsys
import json
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from edn_pipeline.errors import EDNInputError
from edn_pipeline.hints import hint_condition, parse_hints, propagate_hints, render_hints
from edn_pipeline.image_processor import EDNImageProcessor
from edn_pipeline.testing_utils import tiny_tokenizer
from edn_pipeline.training.data import (
    GENERIC_PROMPTS,
    TrainingExampleTransform,
    collate_fn,
    load_image_dataset,
    with_training_transform,
)
from edn_pipeline.training.hint_sampling import quantized_superpixels

RES = 32
CAPTIONS = {
    "astronaut.png": "an astronaut in a white suit",
    "coffee.jpg": "a cup of coffee",
    "cat.png": "a ginger cat",
}


def _write_photos(folder, captions=True):
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(data.astronaut()).resize((48, 40)).save(folder / "astronaut.png")
    Image.fromarray(data.coffee()).resize((40, 56)).save(folder / "coffee.jpg", quality=90)
    Image.fromarray(data.chelsea()).resize((64, 44)).save(folder / "cat.png")
    if captions:
        with open(folder / "metadata.jsonl", "w") as f:
            for name, text in CAPTIONS.items():
                f.write(json.dumps({"file_name": name, "text": text}) + "\n")
    return folder


@pytest.fixture
def photo_dir(tmp_path):
    return _write_photos(tmp_path / "photos")


@pytest.fixture
def cache(tmp_path):
    return tmp_path / "hf-cache"


def _transform(**kwargs):
    kwargs = {"resolution": RES, "tokenizer": tiny_tokenizer(), "seed": 0, **kwargs}
    return TrainingExampleTransform(**kwargs)


def _batches(dataset, transform, num_workers=0, batch_size=2):
    loader = torch.utils.data.DataLoader(
        with_training_transform(dataset, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=num_workers,
        collate_fn=collate_fn,
    )
    return list(loader)


def test_imagefolder_with_captions_yields_model_tensors(photo_dir, cache):
    dataset = load_image_dataset(data_dir=photo_dir, cache_dir=cache)
    assert len(dataset) == 3 and set(dataset.column_names) == {"image", "text"}
    assert sorted(dataset["text"]) == sorted(CAPTIONS.values())

    tokenizer = tiny_tokenizer()
    (batch, second) = _batches(dataset, _transform(generic_prompt_prob=0.0))
    assert batch["num_examples"] == 2 and batch["num_skipped"] == 0 and second["num_examples"] == 1
    assert batch["pixel_values"].shape == (2, 3, RES, RES)
    assert batch["gray_values"].shape == (2, 1, RES, RES)
    assert batch["conditioning_pixel_values"].shape == (2, 7, RES, RES)
    assert batch["input_ids"].shape == (2, tokenizer.model_max_length)
    for key in ("pixel_values", "gray_values", "conditioning_pixel_values"):
        assert batch[key].dtype == torch.float32
    assert -1 <= batch["pixel_values"].min() and batch["pixel_values"].max() <= 1
    assert -1 <= batch["gray_values"].min() and batch["gray_values"].max() <= 1
    assert 0 <= batch["conditioning_pixel_values"].min() and batch["conditioning_pixel_values"].max() <= 1
    assert batch["captions"] == [dataset[i]["text"] for i in range(2)]
    expected_ids = tokenizer(
        batch["captions"],
        max_length=tokenizer.model_max_length,
        padding="max_length",
        truncation=True,
        return_tensors="pt",
    ).input_ids
    torch.testing.assert_close(batch["input_ids"], expected_ids)


def _crop_and_gray(example, row):
    """The example's 8-bit crop and its gray, checked against the gray inference makes of the same photo."""
    crop = np.round((example["pixel_values"].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
    photo = row["image"] if isinstance(row["image"], Image.Image) else Image.open(row["image"]["path"])
    side = min(photo.size)
    left, top = (photo.width - side) // 2, (photo.height - side) // 2
    square = photo.convert("RGB").crop((left, top, left + side, top + side))
    inference = EDNImageProcessor(resolution=RES, size_multiple=8).preprocess([square], [None])
    gray = inference.gray[0, 0].numpy()
    np.testing.assert_allclose((example["gray_values"][0].numpy() + 1) / 2, gray, atol=1e-6)
    return crop, gray


def test_gray_and_condition_match_inference(photo_dir, cache):
    """Region hints: the kept superpixels (confidence 1) with their quantised colours, spread by the same
    propagate_hints and stacked by the same hint_condition as the pipeline's hints."""
    dataset = load_image_dataset(data_dir=photo_dir, cache_dir=cache)
    transform = _transform(no_hint_prob=0.0)
    for row, example in zip(dataset, with_training_transform(dataset, transform)):
        crop, gray = _crop_and_gray(example, row)
        condition = example["conditioning_pixel_values"].numpy()
        for c in range(3):
            np.testing.assert_allclose(condition[c], gray, atol=1e-6)
        confidence = condition[6]
        assert 0 < confidence.min() and confidence.max() == 1.0
        seeds = confidence == 1.0
        assert 0 < seeds.mean() < 1

        labels, colours = quantized_superpixels(crop.astype(np.float32) / 255.0)
        cover = np.bincount(labels.ravel(), seeds.ravel()) / np.bincount(labels.ravel())
        assert set(np.round(cover, 6)) <= {0.0, 1.0}, "whole superpixels are hinted"
        seed_rgb = np.where(seeds[..., None], colours[labels], 0).astype(np.float32)
        expected = hint_condition(gray, *propagate_hints(gray, seeds, seed_rgb)).transpose(2, 0, 1)
        np.testing.assert_array_equal(condition, expected)


def test_point_hint_condition_is_what_inference_builds_from_the_same_point(photo_dir, cache):
    """A point-hinted example's condition equals the pipeline's for a user's click with the truth's colour."""
    dataset = load_image_dataset(data_dir=photo_dir, cache_dir=cache)
    transform = _transform(no_hint_prob=0.0, point_hint_prob=1.0, max_hint_points=1)
    for epoch in range(2):
        transform.set_epoch(epoch)
        for row, example in zip(dataset, with_training_transform(dataset, transform)):
            crop, gray = _crop_and_gray(example, row)
            condition = example["conditioning_pixel_values"].numpy()
            seeds = np.argwhere(condition[6] == 1.0)
            # One point: a disk of radius 1 pixel, whose centre is within one step of every seed pixel.
            assert 1 <= len(seeds) <= 5
            ((y, x),) = [p for p in seeds if np.abs(seeds - p).sum(axis=1).max() <= 1]

            # The hinted pixel has the truth's HSL hue and saturation and the gray's lightness (colorsys reference).
            hue, _, sat = colorsys.rgb_to_hls(*(crop[y, x] / 255.0))
            np.testing.assert_allclose(condition[3:6, y, x], colorsys.hls_to_rgb(hue, gray[y, x], sat), atol=1e-5)

            # What the pipeline builds for a click there, with that colour.
            hints = parse_hints([(x + 0.5, y + 0.5, tuple(int(c) for c in crop[y, x]))], (RES, RES))
            expected = hint_condition(gray, *render_hints(gray, hints, (RES, RES))).transpose(2, 0, 1)
            np.testing.assert_array_equal(condition, expected)


def test_transform_rejects_bad_probabilities():
    for name in ("no_hint_prob", "point_hint_prob", "generic_prompt_prob"):
        for p in (-0.1, 1.5):
            with pytest.raises(EDNInputError, match=name):
                _transform(**{name: p})
    assert "point_hint_prob=0.25" in repr(_transform(point_hint_prob=0.25))


def test_center_crop_is_the_middle_of_the_resized_photo(tmp_path):
    # A photo wider than tall: left third red, middle green, right third blue; the centre crop is green.
    stripes = np.zeros((30, 90, 3), np.uint8)
    stripes[:, :30, 0] = stripes[:, 30:60, 1] = stripes[:, 60:, 2] = 255
    example = _transform(resolution=30).transform_example(Image.fromarray(stripes))
    pixels = (example["pixel_values"] + 1) / 2
    assert pixels[1, :, 2:-2].min() > 0.95 and pixels[[0, 2], :, 2:-2].max() < 0.05

    offsets = {
        float(
            _transform(resolution=30, center_crop=False, seed=s)
            .transform_example(Image.fromarray(stripes))["pixel_values"][0]
            .mean()
        )
        for s in range(6)
    }
    assert len(offsets) > 1, "random crops should move"


def test_folder_without_metadata_has_empty_captions_and_uses_generic_prompts(tmp_path, cache):
    folder = _write_photos(tmp_path / "bare", captions=False)
    dataset = load_image_dataset(data_dir=folder, cache_dir=cache)
    assert dataset["text"] == ["", "", ""]
    (batch,) = _batches(dataset, _transform(generic_prompt_prob=0.0), batch_size=3)
    assert all(c in GENERIC_PROMPTS for c in batch["captions"])

    streamed = next(iter(load_image_dataset(data_dir=folder, cache_dir=cache, streaming=True)))
    assert streamed["text"] == "" and set(streamed["image"]) == {"bytes", "path"}  # left undecoded


def test_generic_prompt_rate_is_binomial_and_never_at_zero(photo_dir):
    image = {"bytes": None, "path": str(photo_dir / "coffee.jpg")}
    caption = CAPTIONS["coffee.jpg"]
    for p in (0.5, 0.2, 0.0):
        transform = _transform(resolution=8, tokenizer=None, no_hint_prob=1.0, generic_prompt_prob=p)
        n, replaced, used = 400, 0, set()
        for epoch in range(n):
            transform.set_epoch(epoch)
            out = transform.transform_example(image, caption)["caption"]
            replaced += out != caption
            used.add(out)
        if p == 0.0:
            assert replaced == 0
        else:
            sd = np.sqrt(n * p * (1 - p))
            assert abs(replaced - n * p) < 5 * sd, (p, replaced)
            assert used - {caption} <= set(GENERIC_PROMPTS) and len(used) > 2


@pytest.mark.parametrize(
    "make_problem, message",
    [
        (lambda tmp: dict(data_dir=tmp / "missing"), "data folder not found"),
        (lambda tmp: dict(data_dir=_write_text_only(tmp / "empty")), "no images found"),
        (
            lambda tmp: dict(data_dir=_write_photos(tmp / "p"), caption_column="caption"),
            r"caption column 'caption' not found.*available columns: image, text",
        ),
        (
            lambda tmp: dict(data_dir=_write_photos(tmp / "p"), image_column="img"),
            r"image column 'img' not found.*available columns: image, text",
        ),
        (lambda tmp: dict(), "exactly one of data_dir"),
        (lambda tmp: dict(data_dir=_write_photos(tmp / "p"), split="validation"), "could not load dataset"),
    ],
)
def test_loading_problems_raise_one_clear_line(tmp_path, cache, make_problem, message):
    with pytest.raises(EDNInputError, match=message) as info:
        load_image_dataset(cache_dir=cache, **make_problem(tmp_path))
    assert "\n" not in str(info.value)


def _write_text_only(folder):
    folder.mkdir()
    (folder / "notes.txt").write_text("no photos here")
    return folder


def test_unreadable_image_is_skipped_and_counted(photo_dir, cache, caplog):
    good = (photo_dir / "cat.png").read_bytes()
    (photo_dir / "broken.png").write_bytes(good[: len(good) // 2])  # truncated PNG
    with open(photo_dir / "metadata.jsonl", "a") as f:
        f.write(json.dumps({"file_name": "broken.png", "text": "half a cat"}) + "\n")
    dataset = load_image_dataset(data_dir=photo_dir, cache_dir=cache)
    assert len(dataset) == 4

    for workers in (0, 2):
        batches = _batches(dataset, _transform(), num_workers=workers, batch_size=2)
        assert sum(b["num_skipped"] for b in batches) == 1
        assert sum(b["num_examples"] for b in batches) == 3
        assert sum(len(b["pixel_values"]) for b in batches) == 3
    assert "broken.png" in caplog.text

    only_bad = collate_fn([dict.fromkeys(("pixel_values", "caption"))])
    assert only_bad == {"num_examples": 0, "num_skipped": 1}


def test_same_seed_same_batches_with_and_without_workers(photo_dir, cache):
    dataset = load_image_dataset(data_dir=photo_dir, cache_dir=cache)
    serial = _batches(dataset, _transform(seed=3), num_workers=0)
    parallel = _batches(dataset, _transform(seed=3), num_workers=2)
    assert len(serial) == len(parallel) == 2
    for a, b in zip(serial, parallel):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], torch.Tensor):
                torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
            else:
                assert a[key] == b[key]
    other = _batches(dataset, _transform(seed=4), num_workers=0)
    assert not torch.equal(serial[0]["conditioning_pixel_values"], other[0]["conditioning_pixel_values"])


def test_epoch_changes_draws_and_transform_pickles(photo_dir):
    image = {"bytes": (photo_dir / "cat.png").read_bytes(), "path": None}
    transform = _transform(no_hint_prob=0.0, center_crop=False)
    first = transform.transform_example(image, "a cat")
    clone = pickle.loads(pickle.dumps(transform))
    torch.testing.assert_close(
        clone.transform_example(image, "a cat")["conditioning_pixel_values"],
        first["conditioning_pixel_values"],
        rtol=0,
        atol=0,
    )
    transform.set_epoch(1)
    assert not torch.equal(
        transform.transform_example(image, "a cat")["conditioning_pixel_values"], first["conditioning_pixel_values"]
    )


def test_streaming_imagefolder(photo_dir, cache):
    dataset = load_image_dataset(data_dir=photo_dir, cache_dir=cache, streaming=True)
    batches = _batches(dataset, _transform(), batch_size=3)
    assert len(batches) == 1 and batches[0]["pixel_values"].shape == (3, 3, RES, RES)
    assert batches[0]["num_skipped"] == 0
