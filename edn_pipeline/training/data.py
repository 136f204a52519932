"""Training data for EDN: load photos with 🤗 datasets and turn each into the model's tensors.

Typical use in a training script::

    dataset = load_image_dataset(data_dir="photos/")                    # or dataset_name="user/set"
    transform = TrainingExampleTransform(resolution=512, tokenizer=pipe.tokenizer, seed=args.seed)
    dataset = with_training_transform(dataset, transform)
    loader = torch.utils.data.DataLoader(dataset, batch_size=8, shuffle=True, num_workers=4,
                                         collate_fn=collate_fn)
    for epoch in range(num_epochs):
        transform.set_epoch(epoch)        # before iterating: workers get a fresh copy each epoch
        for batch in loader:
            skipped += batch["num_skipped"]   # unreadable images dropped from this batch
            if batch["num_examples"] == 0:
                continue
            ...

Each example becomes

- ``pixel_values`` (3, H, W) in [-1, 1]: the colour target, the photo resized so that its shorter side is
  ``resolution`` (bicubic) and centre-cropped (or, with ``center_crop=False``, randomly cropped) to a square;
- ``gray_values`` (1, H, W) in [-1, 1]: what the model sees, the neutral sRGB gray with the crop's CIE L*,
  exactly as at inference (:meth:`~edn_pipeline.image_processor.EDNImageProcessor.gray`: L* measured at the
  photo's own size, then resized);
- ``conditioning_pixel_values`` (7, H, W) in [0, 1]: the adapter's condition,
  :func:`~edn_pipeline.hints.hint_condition` of the gray and of hints sampled by
  :func:`~edn_pipeline.training.hint_sampling.sample_training_hints`;
- ``input_ids`` (model_max_length,): the tokenized caption, replaced by a random generic prompt with
  probability ``generic_prompt_prob`` or when the caption is empty (paper §2.1), and by the empty prompt with
  probability ``proportion_empty_prompts`` (as diffusers' training scripts: the empty prompt is what
  classifier-free guidance's unconditional branch encodes); ``caption`` keeps the text.

Randomness (crop offset, prompt replacement, hints) is reproducible and independent of the DataLoader's
workers and of the order of the data: each example's generator is seeded from ``(seed, epoch, BLAKE2b hash of
the image file's bytes)``.  Identical files therefore get identical draws within an epoch.

An image that cannot be decoded is logged (with its path) and skipped: the transform returns ``None`` fields for
it, :func:`collate_fn` drops it and reports how many it dropped in ``batch["num_skipped"]``, which works in
DataLoader worker processes too (a counter inside a worker would never reach the training script).
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
from PIL import Image, ImageOps

from ..errors import EDNInputError, one_line
from ..hints import hint_condition
from ..image_processor import EDNImageProcessor
from ..luminance import lightness, read_pixels
from ..pipeline_edn import DEFAULT_PROMPT
from .hint_sampling import (
    MAX_HINT_POINTS,
    TRAIN_N_COLORS,
    TRAIN_SLIC_SEGMENTS,
    check_hint_options,
    sample_training_hints,
)

__all__ = [
    "GENERIC_PROMPTS",
    "TrainingExampleTransform",
    "collate_fn",
    "load_image_dataset",
    "with_training_transform",
]

logger = logging.getLogger(__name__)

# Generic prompts that stand in for captions (paper §2.1); the first is what the pipeline uses without a prompt.
GENERIC_PROMPTS = (
    DEFAULT_PROMPT,
    "high-quality photo",
    "a colorful photo",
    "a color photograph",
    "a vivid color photo",
    "a realistic color photo",
)

_METADATA_FILENAMES = ("metadata.csv", "metadata.jsonl", "metadata.parquet")


# --------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------


def load_image_dataset(
    data_dir: str | os.PathLike | None = None,
    dataset_name: str | None = None,
    dataset_config: str | None = None,
    image_column: str = "image",
    caption_column: str | None = "text",
    streaming: bool = False,
    cache_dir: str | os.PathLike | None = None,
    split: str = "train",
):
    """Load training photos as a 🤗 ``Dataset`` (or ``IterableDataset`` when ``streaming``).

    Give exactly one of

    - ``data_dir``: an image folder (``load_dataset("imagefolder", data_dir=...)``), optionally with a
      ``metadata.jsonl`` (or ``.csv`` / ``.parquet``) whose ``file_name`` column names the images and whose
      ``caption_column`` holds their captions.  Without a metadata file every caption is empty (the
      transform then uses generic prompts);
    - ``dataset_name`` (and ``dataset_config``): a dataset on the Hub or a local dataset script/folder,
      ``load_dataset(dataset_name, dataset_config, ...)``, with an image and a text column.

    The image column is cast to ``datasets.Image(decode=False)`` so that images are decoded by
    :class:`TrainingExampleTransform`, which skips unreadable ones instead of failing the run.
    ``caption_column=None`` ignores captions.  Problems raise :class:`~edn_pipeline.errors.EDNInputError`.
    """
    import datasets

    if (data_dir is None) == (dataset_name is None):
        raise EDNInputError("give exactly one of data_dir (an image folder) or dataset_name (a Hub dataset)")

    has_metadata = False
    if data_dir is not None:
        data_dir = os.fspath(data_dir)
        if not os.path.isdir(data_dir):
            raise EDNInputError(f"data folder not found: {data_dir}")
        has_images, has_metadata = _scan_image_folder(data_dir)
        if not has_images:
            raise EDNInputError(f"no images found in data folder {data_dir} (looked for .jpg, .png, .webp, ...)")
        path, name = "imagefolder", None
        kwargs = {"data_dir": data_dir}
    else:
        path, name, kwargs = dataset_name, dataset_config, {}

    source = data_dir if data_dir is not None else repr(dataset_name)
    try:
        dataset = datasets.load_dataset(
            path,
            name,
            split=split,
            streaming=streaming,
            cache_dir=None if cache_dir is None else os.fspath(cache_dir),
            **kwargs,
        )
    except (datasets.exceptions.DatasetNotFoundError, FileNotFoundError, ConnectionError, ValueError) as exc:
        raise EDNInputError(f"could not load dataset {source}: {one_line(exc)}") from None

    columns = _column_names(dataset)
    if image_column not in columns:
        raise EDNInputError(
            f"image column {image_column!r} not found in {source}; available columns: {', '.join(columns)}"
        )
    features = dataset.features
    if features is not None and isinstance(features.get(image_column), datasets.Image):
        dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    if caption_column is not None and caption_column not in columns:
        if data_dir is not None and not has_metadata:
            dataset = _add_empty_captions(dataset, caption_column)
        else:
            raise EDNInputError(
                f"caption column {caption_column!r} not found in {source}; available columns: {', '.join(columns)}"
            )

    return dataset


def with_training_transform(dataset, transform: TrainingExampleTransform):
    """Apply ``transform`` lazily: ``Dataset.with_transform`` (map-style) or ``IterableDataset.map`` (streaming).

    Only the transform's outputs are kept, so the result feeds straight into a DataLoader with
    :func:`collate_fn`.
    """
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        return dataset.map(transform, remove_columns=_column_names(dataset))
    return dataset.with_transform(transform)


def _scan_image_folder(data_dir: str) -> tuple[bool, bool]:
    """Whether the folder (recursively) holds an image file, and a metadata file."""
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    extensions = {e.lower() for e in ImageFolder.EXTENSIONS}
    has_images = has_metadata = False
    for _, _, files in os.walk(data_dir):
        for file in files:
            has_metadata |= file in _METADATA_FILENAMES
            has_images |= os.path.splitext(file)[1].lower() in extensions
        if has_images and has_metadata:
            break
    return has_images, has_metadata


def _column_names(dataset) -> list[str]:
    columns = dataset.column_names
    if columns is None:  # a streamed dataset of unknown features: look at its first example
        columns = list(next(iter(dataset), {}).keys())
    return list(columns)


def _add_empty_captions(dataset, caption_column: str):
    import datasets

    if isinstance(dataset, datasets.IterableDataset):
        features = dataset.features
        if features is not None:
            features = datasets.Features({**features, caption_column: datasets.Value("string")})
        return dataset.map(partial(_empty_caption, column=caption_column), features=features)
    return dataset.add_column(caption_column, [""] * len(dataset))


def _empty_caption(example: dict, column: str) -> dict:
    return {column: ""}


# --------------------------------------------------------------------------
# Per-example transform
# --------------------------------------------------------------------------


class TrainingExampleTransform:
    """Turn dataset examples into EDN training tensors (see the module docstring for the outputs).

    A plain picklable object, so it works with ``Dataset.with_transform`` / ``IterableDataset.map`` and in
    DataLoader worker processes.  Called with a batch (a dict of lists, as ``with_transform`` and
    ``map(batched=True)`` pass) it returns a dict of lists; called with one example (``map``) it returns one
    example.  Unreadable images give ``None`` in every output field.

    Args:
        resolution: side of the square training crop, in pixels.
        tokenizer: the pipeline's CLIP tokenizer; ``None`` leaves out ``input_ids`` (``caption`` stays).
        image_column, caption_column: the dataset's columns; ``caption_column=None`` means no captions.
        hint_ratio, no_hint_prob, point_hint_prob, max_hint_points, n_segments, n_colors: passed to
            :func:`~edn_pipeline.training.hint_sampling.sample_training_hints`.
        generic_prompt_prob: probability of replacing a (non-empty) caption by a generic prompt.
        proportion_empty_prompts: probability of training with the empty prompt instead.
        generic_prompts: the generic prompts, drawn uniformly.
        seed: base seed of all per-example randomness.
        center_crop: centre crop (default, as diffusers' training scripts) or a random crop.
        hint_propagator: the model's learned :class:`~edn_pipeline.hint_propagator.HintPropagator`, if it has
            one: hints are then spread by it, as the pipeline spreads a user's.
    """

    def __init__(
        self,
        resolution: int = 512,
        tokenizer=None,
        image_column: str = "image",
        caption_column: str | None = "text",
        hint_ratio: tuple[float, float] = (0.3, 0.5),
        no_hint_prob: float = 0.1,
        point_hint_prob: float = 0.0,
        max_hint_points: int = MAX_HINT_POINTS,
        generic_prompt_prob: float = 0.5,
        proportion_empty_prompts: float = 0.0,
        generic_prompts: Sequence[str] = GENERIC_PROMPTS,
        seed: int = 0,
        center_crop: bool = True,
        n_segments: int = TRAIN_SLIC_SEGMENTS,
        n_colors: int = TRAIN_N_COLORS,
        hint_propagator=None,
    ):
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 1:
            raise EDNInputError(f"resolution must be a positive integer, got {resolution!r}")
        low, high = check_hint_options(
            hint_ratio,
            max_hint_points=max_hint_points,
            no_hint_prob=no_hint_prob,
            point_hint_prob=point_hint_prob,
            generic_prompt_prob=generic_prompt_prob,
            proportion_empty_prompts=proportion_empty_prompts,
        )
        generic_prompts = tuple(generic_prompts)
        if not generic_prompts or not all(isinstance(p, str) and p.strip() for p in generic_prompts):
            raise EDNInputError("generic_prompts must be a non-empty sequence of non-empty strings")
        self.resolution = resolution
        self.tokenizer = tokenizer
        self.image_column = image_column
        self.caption_column = caption_column
        self.hint_ratio = (low, high)
        self.no_hint_prob = float(no_hint_prob)
        self.point_hint_prob = float(point_hint_prob)
        self.max_hint_points = int(max_hint_points)
        self.generic_prompt_prob = float(generic_prompt_prob)
        self.proportion_empty_prompts = float(proportion_empty_prompts)
        self.generic_prompts = generic_prompts
        self.seed = int(seed)
        self.center_crop = bool(center_crop)
        self.n_segments = int(n_segments)
        self.n_colors = int(n_colors)
        self.hint_propagator = hint_propagator
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the per-example randomness for a new epoch.

        Call it before creating the epoch's DataLoader iterator (with ``persistent_workers=True`` the workers
        keep the copy they were started with).
        """
        self.epoch = int(epoch)

    def __call__(self, examples: dict) -> dict:
        images = examples[self.image_column]
        if isinstance(images, list):  # a batch: dict of lists
            captions = self._captions(examples, len(images))
            outputs = [self.transform_example(image, caption) for image, caption in zip(images, captions)]
            keys = self._output_keys()
            return {key: [None if out is None else out[key] for out in outputs] for key in keys}
        (caption,) = self._captions({k: [v] for k, v in examples.items()}, 1)
        out = self.transform_example(images, caption)
        return out if out is not None else dict.fromkeys(self._output_keys())

    def transform_example(self, image, caption: str = "") -> dict | None:
        """One example's tensors, or None when the image cannot be decoded.

        ``image`` is a ``{"bytes", "path"}`` dict (``datasets.Image(decode=False)``), raw bytes, a file path,
        a PIL image or a uint8 array.
        """
        try:
            photo, key = _decode(image)
        except Exception as exc:  # PIL raises many types for corrupt or truncated files
            logger.warning("skipping unreadable image %s: %s", _describe(image), one_line(exc))
            return None
        crop_rng, prompt_rng, hint_rng = (
            np.random.default_rng(s) for s in np.random.SeedSequence([self.seed, self.epoch, *key]).spawn(3)
        )

        crop = self._crop(photo, crop_rng)
        rgb = np.asarray(crop.resize((self.resolution,) * 2, Image.Resampling.BICUBIC), np.float32) / 255.0
        # The gray image exactly as inference makes it: the crop's L* at its own size, resized.
        gray = EDNImageProcessor.gray(lightness(read_pixels(crop)), (self.resolution,) * 2).numpy()
        hint_rgb, mask = sample_training_hints(
            rgb,
            gray,
            hint_rng,
            hint_ratio=self.hint_ratio,
            no_hint_prob=self.no_hint_prob,
            point_hint_prob=self.point_hint_prob,
            max_points=self.max_hint_points,
            n_segments=self.n_segments,
            n_colors=self.n_colors,
            propagator=self.hint_propagator,
        )
        condition = hint_condition(gray, hint_rgb, mask)

        caption = caption.strip() if isinstance(caption, str) else ""
        replace = prompt_rng.random() < self.generic_prompt_prob
        generic = self.generic_prompts[int(prompt_rng.integers(len(self.generic_prompts)))]
        if replace or not caption:
            caption = generic
        if prompt_rng.random() < self.proportion_empty_prompts:
            caption = ""

        out = {
            "pixel_values": torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)) * 2.0 - 1.0),
            "gray_values": torch.from_numpy(gray[None] * 2.0 - 1.0),
            "conditioning_pixel_values": torch.from_numpy(np.ascontiguousarray(condition.transpose(2, 0, 1))),
            "caption": caption,
        }
        if self.tokenizer is not None:
            out["input_ids"] = self.tokenizer(
                caption,
                max_length=self.tokenizer.model_max_length,
                padding="max_length",
                truncation=True,
                return_tensors="pt",
            ).input_ids[0]
        return out

    def _output_keys(self) -> tuple[str, ...]:
        keys = ("pixel_values", "gray_values", "conditioning_pixel_values", "caption")
        return keys + (("input_ids",) if self.tokenizer is not None else ())

    def _captions(self, examples: dict, n: int) -> list[str]:
        if self.caption_column is None:
            return [""] * n
        if self.caption_column not in examples:
            raise EDNInputError(
                f"caption column {self.caption_column!r} not found; available columns: {', '.join(examples)}"
            )
        return [c if isinstance(c, str) else "" for c in examples[self.caption_column]]

    def _crop(self, photo: Image.Image, rng: np.random.Generator) -> Image.Image:
        """The square of the photo to train on, at the photo's own size: the largest square (centred, or at a
        random place), as diffusers' training scripts resize the shorter side to ``resolution`` and crop."""
        width, height = photo.size
        side = min(width, height)
        if self.center_crop:
            left, top = (width - side) // 2, (height - side) // 2
        else:
            left, top = int(rng.integers(width - side + 1)), int(rng.integers(height - side + 1))
        return photo.crop((left, top, left + side, top + side))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(resolution={self.resolution}, hint_ratio={self.hint_ratio}, "
            f"no_hint_prob={self.no_hint_prob}, point_hint_prob={self.point_hint_prob}, generic_prompt_prob={self.generic_prompt_prob}, "
            f"seed={self.seed}, epoch={self.epoch}, center_crop={self.center_crop})"
        )


def _decode(image) -> tuple[Image.Image, list[int]]:
    """An RGB PIL image (EXIF orientation applied) and the 32-bit words of a stable hash of the image."""
    if isinstance(image, dict):
        data, path = image.get("bytes"), image.get("path")
        if data is None:
            if not path:
                raise EDNInputError("image entry has neither bytes nor path")
            data = _read(path)
    elif isinstance(image, (bytes, bytearray)):
        data = bytes(image)
    elif isinstance(image, (str, os.PathLike)):
        data = _read(os.fspath(image))
    elif isinstance(image, Image.Image):
        image.load()
        data = None
        digest = hashlib.blake2b(f"{image.mode}{image.size}".encode() + image.tobytes(), digest_size=16)
        photo = image
    elif isinstance(image, np.ndarray):
        return _decode(Image.fromarray(image))
    else:
        raise EDNInputError(f"unsupported image value of type {type(image).__name__}")

    if data is not None:
        digest = hashlib.blake2b(data, digest_size=16)
        photo = Image.open(io.BytesIO(data))
        photo.load()
    photo = _to_rgb(ImageOps.exif_transpose(photo))
    key = np.frombuffer(digest.digest(), dtype="<u4").tolist()
    return photo, key


def _read(path: str) -> bytes:
    if os.path.exists(path):
        with open(path, "rb") as f:
            return f.read()
    from datasets.utils.file_utils import xopen  # remote (streamed) files: URLs, hf://, archives

    with xopen(path, "rb") as f:
        return f.read()


def _to_rgb(photo: Image.Image) -> Image.Image:
    """RGB of any mode: transparent pixels over white, 16-bit gray scaled to 8 bits."""
    if photo.mode == "RGB":
        return photo
    if photo.mode == "I" or photo.mode.startswith("I;16"):
        gray = np.clip(np.asarray(photo, dtype=np.float32) / 257.0, 0.0, 255.0)
        return Image.fromarray(np.round(gray).astype(np.uint8)).convert("RGB")
    if "A" in photo.getbands() or "a" in photo.getbands() or "transparency" in photo.info:
        rgba = photo.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return photo.convert("RGB")


def _describe(image) -> str:
    if isinstance(image, dict) and image.get("path"):
        return str(image["path"])
    if isinstance(image, (str, os.PathLike)):
        return os.fspath(image)
    return f"<{type(image).__name__}>"


# --------------------------------------------------------------------------
# Batching
# --------------------------------------------------------------------------


def collate_fn(examples: list[dict]) -> dict:
    """Stack transformed examples into a batch, dropping unreadable ones.

    Returns the stacked tensors present in the examples (``pixel_values``, ``gray_values``,
    ``conditioning_pixel_values``, ``input_ids``), ``captions`` (list of str), ``num_examples`` and
    ``num_skipped`` (how many unreadable images were dropped from this batch; sum it over batches for the
    run's count).  When every image of a batch was unreadable the batch holds no tensors and
    ``num_examples == 0``.
    """
    good = [ex for ex in examples if any(isinstance(value, torch.Tensor) for value in ex.values())]
    batch = {"num_examples": len(good), "num_skipped": len(examples) - len(good)}
    if not good:
        return batch
    for key, value in good[0].items():
        if isinstance(value, torch.Tensor):
            batch[key] = torch.stack([ex[key] for ex in good]).contiguous()
    batch["captions"] = [ex.get("caption", "") for ex in good]
    return batch
