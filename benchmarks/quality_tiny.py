"""Colourise the held-out photos with an EDN model and compare it with the grayscale floor and a classical baseline.

Rows (PSNR, SSIM, colourfulness from :mod:`edn_pipeline.metrics`, means over the photos):

1. the grayscale input itself as the output (the floor);
2. EDN with no hints and the generic prompt;
3. EDN with 10 hints per photo taken from the ground truth at fixed, seeded positions;
4. Levin, Lischinski & Weiss 2004, "Colorization using Optimization", given the same 10 hints: a sparse linear
   solve with scipy (benchmark code, not package code).

Every photo is first resized so that its longer side is at most ``--max-side`` (the baseline's solve grows with
the pixel count); all rows are scored at that size against that photo.

    python benchmarks/quality_tiny.py --data ../shared/data/photos --model edn-tiny --grid docs/before_after.png

``--grid`` also writes a picture of the first photos: grayscale input, rows 2-4, and the original.
"""

import argparse
import statistics
from pathlib import Path

import numpy as np
import PIL.Image
import scipy.sparse
import scipy.sparse.linalg
import torch
from skimage.color import rgb2yuv, yuv2rgb

from edn_pipeline import EDNPipeline
from edn_pipeline.files import IMAGE_SUFFIXES
from edn_pipeline.luminance import gray_from_lightness, to_lightness, to_uint8
from edn_pipeline.metrics import colourfulness, psnr, ssim

HELD_OUT = ("bsd100", "urban100")


def held_out_photos(data: Path) -> list[Path]:
    """img_09* of bsd100 and urban100 when given shared/data/photos, else every image of the folder."""
    found = [p for folder in HELD_OUT for p in sorted((data / folder).glob("img_09*"))]
    return found or sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load(path: Path, max_side: int) -> np.ndarray:
    with PIL.Image.open(path) as image:
        image = image.convert("RGB")
        scale = min(1.0, max_side / max(image.size))
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)), PIL.Image.Resampling.LANCZOS)
        return np.array(image)


def ground_truth_hints(photo: np.ndarray, count: int, seed: int, radius: float) -> list[tuple]:
    """``count`` points at seeded positions, each with the photo's colour there."""
    rng = np.random.default_rng(seed)
    height, width = photo.shape[:2]
    xs, ys = rng.integers(0, width, count), rng.integers(0, height, count)
    return [(int(x), int(y), tuple(int(c) for c in photo[y, x]), radius) for x, y in zip(xs, ys)]


def levin_colorize(gray: np.ndarray, hints: list[tuple], radius: float) -> np.ndarray:
    """Levin et al. 2004: chroma U, V that vary like the luminance, fixed at the scribbles (3×3 windows)."""
    height, width = gray.shape
    n = height * width
    index = np.arange(n).reshape(height, width)
    padded = np.pad(gray, 1, mode="edge")
    windows = np.stack([padded[dy : dy + height, dx : dx + width] for dy in range(3) for dx in range(3)])
    variance = np.maximum(windows.var(axis=0), 1e-6)
    rows, cols, weights = [], [], []
    for k, (dy, dx) in enumerate((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)):
        if dy == dx == 0:
            continue
        ys, xs = np.mgrid[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
        rows.append(index[ys, xs].ravel())
        cols.append(index[ys + dy, xs + dx].ravel())
        weights.append(np.exp(-((gray[ys, xs] - gray[ys + dy, xs + dx]) ** 2) / (2 * variance[ys, xs])).ravel())
    rows, cols, weights = np.concatenate(rows), np.concatenate(cols), np.concatenate(weights)
    sums = np.bincount(rows, weights, minlength=n)
    weights = weights / sums[rows]

    constrained = np.zeros((height, width), bool)
    targets = np.zeros((height, width, 2))
    ys, xs = np.mgrid[0:height, 0:width]
    for x, y, colour, _ in hints:
        disk = (xs - x) ** 2 + (ys - y) ** 2 <= radius**2
        constrained |= disk
        targets[disk] = rgb2yuv(np.array(colour, float)[None, None] / 255)[0, 0, 1:]
    free = ~constrained.ravel()
    keep = free[rows]  # a constrained pixel's row is the identity
    matrix = scipy.sparse.identity(n, format="csr") - scipy.sparse.csr_matrix(
        (weights[keep], (rows[keep], cols[keep])), shape=(n, n)
    )
    chroma = np.stack(
        [scipy.sparse.linalg.spsolve(matrix.tocsc(), np.where(free, 0.0, targets[..., c].ravel())) for c in (0, 1)],
        axis=-1,
    ).reshape(height, width, 2)
    return np.clip(yuv2rgb(np.concatenate([gray[..., None], chroma], axis=-1)), 0, 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="shared/data/photos, or a folder of photos")
    parser.add_argument("--model", required=True, help="an EDN folder or Hub id")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--strength", type=float, default=None, help="default: the model's default_strength")
    parser.add_argument("--hints", type=int, default=10)
    parser.add_argument("--hint-radius", type=float, default=3.0, help="pixels, for EDN and the baseline alike")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", type=Path, default=None, help="write a before/after PNG of the first photos here")
    parser.add_argument("--grid-photos", type=int, default=4)
    parser.add_argument("--grid-height", type=int, default=160, help="pixels per photo in the grid")
    args = parser.parse_args()

    pipe = EDNPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    paths = held_out_photos(args.data)
    rows = {name: {"PSNR": [], "SSIM": [], "colourfulness": []} for name in (
        "1. grayscale input (floor)", "2. EDN, no hints, generic prompt",
        f"3. EDN, {args.hints} ground-truth hints", f"4. Levin et al. 2004, same {args.hints} hints",
    )}
    grid_rows = []
    for number, path in enumerate(paths):
        photo = load(path, args.max_side)
        gray_values = gray_from_lightness(to_lightness(photo))
        gray = to_uint8(np.repeat(gray_values[..., None], 3, axis=-1))
        hints = ground_truth_hints(photo, args.hints, args.seed + number, args.hint_radius)

        def colourise(**kwargs):
            generator = torch.Generator().manual_seed(args.seed)
            image = pipe(
                gray, num_inference_steps=args.steps, guidance_scale=args.guidance, strength=args.strength,
                generator=generator, **kwargs,
            )
            return np.array(image.images[0])

        outputs = [
            gray,
            colourise(),
            colourise(hints=hints),
            to_uint8(levin_colorize(gray_values.astype(np.float64), hints, args.hint_radius)),
        ]
        for (name, scores), output in zip(rows.items(), outputs):
            scores["PSNR"].append(psnr(output, photo))
            scores["SSIM"].append(ssim(output, photo))
            scores["colourfulness"].append(colourfulness(output))
        print(f"{path.parent.name}/{path.name}: " + ", ".join(f"{psnr(o, photo):.2f}" for o in outputs), flush=True)
        if number < args.grid_photos:
            grid_rows.append([*outputs, photo])

    truth = statistics.mean(colourfulness(load(p, args.max_side)) for p in paths)
    print(f"\n{len(paths)} held-out photos from {args.data} (longer side <= {args.max_side}); model {args.model}, "
          f"{args.steps} steps, strength {args.strength or pipe.config.default_strength}, guidance {args.guidance}, "
          f"seed {args.seed}; ground-truth colourfulness {truth:.2f}")
    print("| row | PSNR (dB) | SSIM | colourfulness |\n|---|---|---|---|")
    for name, scores in rows.items():
        print(f"| {name} | {statistics.mean(scores['PSNR']):.2f} | {statistics.mean(scores['SSIM']):.4f} | "
              f"{statistics.mean(scores['colourfulness']):.2f} |")
    if args.grid is not None:
        save_grid(grid_rows, args.grid, args.grid_height)
        columns = "grayscale input, EDN without hints, EDN with hints, Levin et al., original"
        print(f"\nwrote {args.grid}: columns {columns}")


def save_grid(rows: list[list[np.ndarray]], path: Path, height: int) -> None:
    """One line per photo, every image scaled to ``height`` pixels, 4 pixels of white between them."""
    lines = []
    for images in rows:
        scaled = [PIL.Image.fromarray(i).resize((round(i.shape[1] * height / i.shape[0]), height)) for i in images]
        gap = np.full((height, 4, 3), 255, np.uint8)
        lines.append(np.concatenate([part for image in scaled for part in (np.array(image), gap)][:-1], axis=1))
    width = max(line.shape[1] for line in lines)
    padded = [np.pad(line, ((0, 4), (0, width - line.shape[1]), (0, 0)), constant_values=255) for line in lines]
    PIL.Image.fromarray(np.concatenate(padded)[:-4]).save(path)


if __name__ == "__main__":
    main()
