"""Measure the training-data throughput: examples per second (and per worker) of the full EDN transform.

Loads an image folder with ``load_image_dataset``, applies ``TrainingExampleTransform`` (decode, centre crop and
resize, the gray of the crop's L* as EDNImageProcessor makes it, point and SLIC-region hints propagated by Levin et
al.'s solve, condition, tokenization) through a torch DataLoader with ``collate_fn``, and times ``--batches`` batches after a warm-up batch (so worker start-up is not
counted) for each worker count.  A per-stage breakdown of one process follows.

    python benchmarks/data_throughput.py --data ../shared/data/photos/bsds500-train --workers 0 1 2
"""

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import PIL.Image
import torch

from edn_pipeline.hints import hint_condition
from edn_pipeline.image_processor import EDNImageProcessor
from edn_pipeline.luminance import lightness, read_pixels
from edn_pipeline.testing_utils import tiny_tokenizer
from edn_pipeline.training.data import (
    TrainingExampleTransform,
    _decode,
    collate_fn,
    load_image_dataset,
    with_training_transform,
)
from edn_pipeline.training.hint_sampling import sample_training_hints


def throughput(dataset, transform, workers: int, batch_size: int, batches: int) -> tuple[float, int]:
    """(examples per second, examples timed) over ``batches`` batches after one warm-up batch."""
    loader = torch.utils.data.DataLoader(
        with_training_transform(dataset, transform),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        collate_fn=collate_fn,
    )
    iterator = iter(loader)
    next(iterator)  # warm-up: worker start-up, imports, first decode
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            break
        count += batch["num_examples"] + batch["num_skipped"]
    elapsed = time.perf_counter() - start
    del iterator
    return count / elapsed, count


def stage_times(dataset, transform, n: int) -> dict[str, float]:
    """Median seconds per example of each stage, in this process."""
    stages: dict[str, list[float]] = {
        k: [] for k in ("decode", "crop+resize", "gray (L*)", "hints", "condition", "tokenize")
    }
    rng = np.random.default_rng(0)
    for i in range(n):
        image = dataset[i][transform.image_column]
        t0 = time.perf_counter()
        photo, _ = _decode(image)
        t1 = time.perf_counter()
        crop = transform._crop(photo, rng)
        size = (transform.resolution,) * 2
        rgb = np.asarray(crop.resize(size, PIL.Image.Resampling.BICUBIC), np.float32) / 255
        t2 = time.perf_counter()
        gray = EDNImageProcessor.gray(lightness(read_pixels(crop)), size).numpy()
        t3 = time.perf_counter()
        hint_rgb, mask = sample_training_hints(rgb, gray, rng, no_hint_prob=0.0)
        t4 = time.perf_counter()
        hint_condition(gray, hint_rgb, mask)
        t5 = time.perf_counter()
        transform.tokenizer(
            "colored photo",
            max_length=transform.tokenizer.model_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        t6 = time.perf_counter()
        for key, dt in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            stages[key].append(dt)
    return {k: statistics.median(v) for k, v in stages.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="an image folder (optionally with metadata.jsonl)")
    parser.add_argument("--resolution", type=int, default=512)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2], help="DataLoader worker counts")
    parser.add_argument("--batches", type=int, default=8, help="batches timed per worker count")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--cache-dir", default=None, help="datasets cache (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        dataset = load_image_dataset(data_dir=args.data, cache_dir=args.cache_dir or tmp)
        transform = TrainingExampleTransform(resolution=args.resolution, tokenizer=tiny_tokenizer(), seed=0)
        print(
            f"{len(dataset)} images in {args.data}; resolution {args.resolution}; batch size {args.batch_size}; "
            f"{args.batches} batches timed; {os.cpu_count()} CPUs; torch threads {torch.get_num_threads()}"
        )
        print()
        print("| workers | examples timed | examples/s | examples/s/worker |")
        print("|---:|---:|---:|---:|")
        for workers in args.workers:
            rate, count = throughput(dataset, transform, workers, args.batch_size, args.batches)
            print(f"| {workers} | {count} | {rate:.2f} | {rate / max(workers, 1):.2f} |", flush=True)

        n = min(len(dataset), 16)
        stages = stage_times(dataset, transform, n)
        total = sum(stages.values())
        print()
        print(f"Per-stage median over {n} examples, one process (workers=0 counts the main process as one worker):")
        print()
        print("| stage | ms/example | share |")
        print("|---|---:|---:|")
        for key, value in stages.items():
            print(f"| {key} | {value * 1000:.1f} | {value / total:.0%} |")
        print(f"| total | {total * 1000:.1f} | |")


if __name__ == "__main__":
    main()
