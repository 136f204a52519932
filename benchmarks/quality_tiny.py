"""Score an EDN model on the held-out photos against the gray floor, Levin et al.'s baseline and its latent ceiling.

One run answers what the hints, the words and the autoencoder each give. Rows (PSNR, SSIM, colourfulness from
:mod:`edn_pipeline.evaluation.metrics`, means over the photos):

* the grayscale input itself as the output (the floor);
* EDN given the first K of 50 seeded ground-truth points, for each K of ``--hint-counts`` (the points of a smaller
  K are a prefix of a larger K's, so the sweep isolates the number of hints); K=0 is no hints, generic prompt;
* Levin, Lischinski & Weiss 2004 (:func:`edn_pipeline.propagation.levin_colorize`) given the same K points;
* the latent ceiling: the photo encoded by the model's VAE and decoded by its luminance-aware decoder (refinement
  off), put on the input's L* by the pipeline's own postprocess. No colourisation through that latent does better,
  so the gap between it and EDN is the denoiser's, the gap between it and the photo the autoencoder's.

Then whether words steer colour (``--skip-words`` leaves it out: 12 more pipeline calls per photo): the prompt
naming the photo's dominant basic colour terms against the generic prompt, and for each of the eleven basic terms
whether "a photo, mostly <term>" moves the output's mean CIE a*b* closer to the term's prototype than the generic
prompt's output is. Finally it checks the targets:

1. EDN at K=10 ≥ Levin at K=10 + 0.5 dB, and EDN ≥ Levin at every K ≥ 5;
2. EDN at K=10 ≥ EDN at K=0 + 3 dB;
3. EDN at K=0 ≥ the gray floor (PSNR), with colourfulness ≥ 20;
4. the latent ceiling ≥ 32 dB;
5. naming the colours adds ≥ 0.5 dB, and ≥ 80 % of (photo, term) pairs move toward the named colour.

Every photo is first resized so that its longer side is at most ``--max-side`` (Levin's solve grows with the pixel
count); all rows are scored at that size against that photo.

    python benchmarks/quality_tiny.py --data ../shared/data/photos --model edn_pipeline/edn-tiny --json q.json

``--grid`` draws the first photos (gray input, EDN without and with hints, Levin, original), ``--curve`` plots PSNR
against K (needs matplotlib), ``--timings`` prints the training recipe's throughput from its timings file.
"""

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import numpy as np
import PIL.Image
import PIL.ImageDraw
import torch

from edn_pipeline import EDNPipeline
from edn_pipeline.colour_terms import BASIC_COLOUR_TERMS, colour_caption, colour_terms, term_chroma
from edn_pipeline.commands.common import generation_settings
from edn_pipeline.evaluation.metrics import colourfulness, psnr, ssim
from edn_pipeline.files import IMAGE_SUFFIXES
from edn_pipeline.luminance import chroma, gray_from_lightness, to_lightness, to_uint8
from edn_pipeline.propagation import levin_colorize

try:  # only --curve needs it; a Figure made without pyplot draws with the Agg backend
    from matplotlib.figure import Figure
except ImportError:
    Figure = None

HELD_OUT = ("bsd100", "urban100")
MAX_HINTS = 50  # seeded points per photo; every K takes a prefix, so K is the only thing that changes
SUBJECT = "a photo"  # the captions' subject: the held-out photos have no captions of their own
FLOOR, CEILING = "gray floor", "latent ceiling"


def hint_counts(text: str) -> list[int]:
    """``"1,5,10"`` → [0, 1, 5, 10]: K=0 is always run, as the words section and the grid compare with it."""
    counts = sorted({0, *(int(k) for k in text.split(","))})
    if counts[-1] > MAX_HINTS or counts[0] < 0:
        raise argparse.ArgumentTypeError(f"hint counts must lie in 0..{MAX_HINTS}")
    return counts


def parse_args() -> argparse.Namespace:
    """The options, checked before the model loads so that a bad one fails at once."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="shared/data/photos, or a folder of photos")
    parser.add_argument("--model", required=True, help="an EDN folder or Hub id")
    parser.add_argument("--label", help="the model's name in the tables (default: the --model folder's name)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--hint-guidance", type=float, default=1.0, help="the pipeline's hint_guidance_scale")
    parser.add_argument("--strength", type=float, default=None, help="default: the model's default_strength")
    parser.add_argument("--vq-steps", type=int, default=None, help="token refinement steps (default: the decoder's)")
    parser.add_argument("--temperature", type=float, default=1.0, help="the refiner's token temperature")
    parser.add_argument(
        "--truncation-rate", type=float, default=None, help="the refiner's truncation (default: the decoder's)"
    )
    parser.add_argument("--hint-counts", type=hint_counts, default="0,1,2,5,10,20,50", help="comma-separated K")
    parser.add_argument("--hint-radius", type=float, default=3.0, help="pixels, for EDN and the baseline alike")
    parser.add_argument("--max-side", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-words", action="store_true", help="leave out the colour-word prompts")
    parser.add_argument("--json", type=Path, default=None, help="write every mean and the targets here")
    parser.add_argument("--timings", type=Path, default=None, help="the training recipe's timings JSON to print")
    parser.add_argument("--curve", type=Path, default=None, help="plot PSNR against K to this PNG")
    parser.add_argument("--grid", type=Path, default=None, help="write a before/after PNG of the first photos here")
    parser.add_argument("--grid-photos", type=int, default=4)
    parser.add_argument("--grid-hints", type=int, default=10, help="the K of the grid's hinted columns")
    parser.add_argument("--grid-height", type=int, default=160, help="pixels per photo in the grid")
    args = parser.parse_args()
    if args.grid is not None and args.grid_hints not in args.hint_counts[1:]:
        parser.error(f"--grid-hints {args.grid_hints} must be one of the non-zero --hint-counts")
    if args.curve is not None and Figure is None:
        print("install matplotlib for --curve; running without the curve", flush=True)
        args.curve = None
    args.label = args.label or Path(args.model).name
    return args


def held_out_photos(data: Path) -> list[Path]:
    """img_09* of bsd100 and urban100 when given shared/data/photos, else every image of the folder."""
    found = [p for folder in HELD_OUT for p in sorted((data / folder).glob("img_09*"))]
    return found or sorted(p for p in data.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def load(path: Path, max_side: int) -> np.ndarray:
    """The photo as uint8 RGB, its longer side shrunk (Lanczos) to at most ``max_side``."""
    with PIL.Image.open(path) as image:
        image = image.convert("RGB")
        scale = min(1.0, max_side / max(image.size))
        if scale < 1:
            size = (round(image.width * scale), round(image.height * scale))
            image = image.resize(size, PIL.Image.Resampling.LANCZOS)
        return np.array(image)


def ground_truth_hints(photo: np.ndarray, count: int, seed: int, radius: float) -> list[tuple]:
    """``count`` points at seeded positions, each with the photo's colour there."""
    rng = np.random.default_rng(seed)
    height, width = photo.shape[:2]
    xs, ys = rng.integers(0, width, count), rng.integers(0, height, count)
    return [(int(x), int(y), tuple(int(c) for c in photo[y, x]), radius) for x, y in zip(xs, ys)]


def edn_row(label: str, count: int) -> str:
    return f"{label} K={count}"


def levin_row(count: int) -> str:
    return f"Levin K={count}"


def colourise(pipe: EDNPipeline, args: argparse.Namespace, gray: np.ndarray, **kwargs) -> np.ndarray:
    """One pipeline call, seeded the same for every row so that rows differ only in what they are given."""
    generator = torch.Generator().manual_seed(args.seed)
    image = pipe(gray, generator=generator, **generation_settings(args), **kwargs)
    return np.array(image.images[0])


def levin(gray: np.ndarray, points: list[tuple]) -> np.ndarray:
    """Levin et al. given the points as scribbles: disks of their radius in their colour."""
    ys, xs = np.mgrid[0 : gray.shape[0], 0 : gray.shape[1]]
    seed, seed_rgb = np.zeros(gray.shape, bool), np.zeros(gray.shape + (3,))
    for x, y, colour, radius in points:
        disk = (xs - x) ** 2 + (ys - y) ** 2 <= radius**2
        seed |= disk
        seed_rgb[disk] = np.array(colour) / 255
    return to_uint8(levin_colorize(gray, seed, seed_rgb))


@torch.no_grad()
def latent_ceiling(pipe: EDNPipeline, photo: np.ndarray) -> np.ndarray:
    """The photo through the model's VAE encoder and luminance-aware decoder, on its L* as the pipeline puts it."""
    inputs = pipe.image_processor.preprocess([photo], [None])
    lightness, gray = inputs.lightness, inputs.gray
    size = pipe.working_size(photo.shape[1], photo.shape[0])
    small = np.array(PIL.Image.fromarray(photo).resize(size, PIL.Image.Resampling.BICUBIC))
    pixels = torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255
    latents = pipe.vae.encode((pixels * 2 - 1).to(pipe.vae.device, pipe.vae.dtype)).latent_dist.mode()
    dtype = pipe.decoder.dtype
    decoded = pipe.decoder(latents.to(dtype), (gray * 2 - 1).to(latents.device, dtype), vq_steps=0).sample
    return to_uint8(pipe.image_processor.postprocess((decoded.float() / 2 + 0.5).clamp(0, 1), lightness, "np")[0])


def mean_chroma(rgb: np.ndarray) -> np.ndarray:
    """The CIE a*, b* averaged over the pixels: the way an output's colours lean."""
    return chroma(rgb).reshape(-1, 2).mean(axis=0)


def colour_words(pipe, args, gray: np.ndarray, photo: np.ndarray, generic: np.ndarray) -> tuple[float, dict]:
    """PSNR with the prompt naming the photo's colours, and per basic term whether "mostly <term>" moves the mean
    a*b* closer to the term's prototype than the generic prompt's output (``generic``) is."""
    named = colourise(pipe, args, gray, prompt=colour_caption(SUBJECT, colour_terms(photo)))
    start = mean_chroma(generic)
    toward = {}
    for term in BASIC_COLOUR_TERMS:
        target = term_chroma(term)
        steered = mean_chroma(colourise(pipe, args, gray, prompt=colour_caption(SUBJECT, [term])))
        toward[term] = bool(np.linalg.norm(steered - target) < np.linalg.norm(start - target))
    return psnr(named, photo), toward


def photo_rows(pipe, args, number: int, photo: np.ndarray) -> tuple[dict[str, np.ndarray], list[tuple], np.ndarray]:
    """Every row's output for one photo (by row name), its hint points and its gray input."""
    gray_values = gray_from_lightness(to_lightness(photo))
    gray = to_uint8(np.repeat(gray_values[..., None], 3, axis=-1))
    points = ground_truth_hints(photo, MAX_HINTS, args.seed + number, args.hint_radius)
    outputs = {FLOOR: gray}
    for count in args.hint_counts:
        outputs[edn_row(args.label, count)] = colourise(pipe, args, gray, hints=points[:count] or None)
    for count in args.hint_counts[1:]:
        outputs[levin_row(count)] = levin(gray_values, points[:count])
    outputs[CEILING] = latent_ceiling(pipe, photo)
    return outputs, points, gray


def grid_choice(paths: list[Path], count: int) -> set[int]:
    """The first ``count`` photos of the orientation most photos have: rows of one orientation fill the grid's
    columns, where a portrait photo among landscape ones would leave white space beside it."""
    portrait = []
    for path in paths:
        with PIL.Image.open(path) as image:
            portrait.append(image.height > image.width)
    common = sum(portrait) * 2 > len(portrait)
    return set([i for i, tall in enumerate(portrait) if tall == common][:count])


def evaluate(pipe, args, paths: list[Path]) -> tuple[dict, dict, float, list]:
    """Score every photo: per-row score lists, colour-word results, ground-truth colourfulness and the grid rows."""
    scores = {}
    words = {"named": [], "toward": {term: [] for term in BASIC_COLOUR_TERMS}}
    truth, grid, grid_photos = [], [], grid_choice(paths, args.grid_photos) if args.grid else set()
    for number, path in enumerate(paths):
        photo = load(path, args.max_side)
        outputs, points, gray = photo_rows(pipe, args, number, photo)
        for row, output in outputs.items():
            row_scores = scores.setdefault(row, {"PSNR": [], "SSIM": [], "colourfulness": []})
            row_scores["PSNR"].append(psnr(output, photo))
            row_scores["SSIM"].append(ssim(output, photo))
            row_scores["colourfulness"].append(colourfulness(output))
        truth.append(colourfulness(photo))
        line = ", ".join(f"{row} {scores[row]['PSNR'][-1]:.2f}" for row in outputs)
        if not args.skip_words:
            named, toward = colour_words(pipe, args, gray, photo, outputs[edn_row(args.label, 0)])
            words["named"].append(named)
            for term, moved in toward.items():
                words["toward"][term].append(moved)
            line += f"; colours named {named:.2f}, {sum(toward.values())}/{len(toward)} terms steer"
        print(f"[{number + 1}/{len(paths)}] {path.parent.name}/{path.name}: {line}", flush=True)
        if number in grid_photos:
            hinted = points[: args.grid_hints]
            grid.append(
                [
                    (gray, []),
                    (outputs[edn_row(args.label, 0)], []),
                    (outputs[edn_row(args.label, args.grid_hints)], hinted),
                    (outputs[levin_row(args.grid_hints)], hinted),
                    (photo, []),
                ]
            )
    return scores, words, statistics.mean(truth), grid


def summarise_words(words: dict, generic: float) -> dict:
    """Mean PSNRs of the generic and the colour-naming prompt, and the shares of pairs that move toward the term."""
    named = statistics.mean(words["named"])
    per_term = {term: statistics.mean(moved) for term, moved in words["toward"].items()}
    overall = statistics.mean(m for moved in words["toward"].values() for m in moved)
    return {
        "generic PSNR": generic,
        "named PSNR": named,
        "gain": named - generic,
        "toward": overall,
        "toward per term": per_term,
    }


def check_targets(means: dict, words: dict | None, args) -> list[tuple[bool | None, str]]:
    """The five targets, each (holds, text with its numbers); None where this run did not measure it."""
    edn = {k: means[edn_row(args.label, k)]["PSNR"] for k in args.hint_counts}
    baseline = {k: means[levin_row(k)]["PSNR"] for k in args.hint_counts[1:]}
    floor, ceiling, name = means[FLOOR]["PSNR"], means[CEILING]["PSNR"], args.label
    results = []
    if 10 in edn:
        behind = [k for k in baseline if k >= 5 and edn[k] < baseline[k]]
        where = f"behind Levin at K={behind}" if behind else "not behind Levin at any K ≥ 5"
        results.append(
            (
                edn[10] >= baseline[10] + 0.5 and not behind,
                f"(1) {name} K=10 {edn[10]:.2f} dB vs Levin K=10 {baseline[10]:.2f} dB (need +0.5); {where}",
            )
        )
        results.append((edn[10] - edn[0] >= 3, f"(2) {name} K=10 − K=0 = {edn[10] - edn[0]:+.2f} dB (need +3)"))
    else:
        results += [(None, f"({n}) not measured: K=10 is not in --hint-counts") for n in (1, 2)]
    colourful = means[edn_row(name, 0)]["colourfulness"]
    results.append(
        (
            edn[0] >= floor and colourful >= 20,
            f"(3) {name} K=0 {edn[0]:.2f} dB vs gray floor {floor:.2f} dB, colourfulness {colourful:.2f} (need 20)",
        )
    )
    results.append((ceiling >= 32, f"(4) latent ceiling {ceiling:.2f} dB (need 32)"))
    if words is None:
        results.append((None, "(5) not measured: --skip-words"))
    else:
        results.append(
            (
                words["gain"] >= 0.5 and words["toward"] >= 0.8,
                f"(5) naming the colours "
                f"{words['gain']:+.2f} dB (need +0.5), {words['toward']:.0%} of pairs move toward the "
                "named colour (need 80%)",
            )
        )
    return results


def print_report(means: dict, words: dict | None, targets: list, truth: float, args) -> None:
    """The Markdown tables, the colour-word results and the targets."""
    print("\n| row | PSNR (dB) | SSIM | colourfulness |\n|---|---|---|---|")
    for row, mean in means.items():
        print(f"| {row} | {mean['PSNR']:.2f} | {mean['SSIM']:.4f} | {mean['colourfulness']:.2f} |")
    print(f"\nground-truth colourfulness {truth:.2f}")
    print(f"\n| K | {args.label} PSNR | Levin PSNR | difference |\n|---|---|---|---|")
    for count in args.hint_counts:
        edn = means[edn_row(args.label, count)]["PSNR"]
        baseline = means[levin_row(count)]["PSNR"] if count else None
        cells = ("—", "—") if baseline is None else (f"{baseline:.2f}", f"{edn - baseline:+.2f}")
        print(f"| {count} | {edn:.2f} | {cells[0]} | {cells[1]} |")
    if words is not None:
        print(
            f"\ncolour words, no hints: generic prompt {words['generic PSNR']:.2f} dB, prompt naming the photo's "
            f'colours {words["named PSNR"]:.2f} dB ({words["gain"]:+.2f} dB); "{SUBJECT}, mostly <term>" moves '
            f"the mean a*b* toward the term in {words['toward']:.0%} of (photo, term) pairs"
        )
        print("\n| term | share that moves toward it |\n|---|---|")
        for term, share in words["toward per term"].items():
            print(f"| {term} | {share:.0%} |")
    print("\ntargets:")
    for holds, text in targets:
        print(f"{'—' if holds is None else '✓' if holds else '✗'} {text}")


def clock(seconds: float) -> str:
    """h:mm."""
    minutes = round(seconds / 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


def print_timings(stages: list[dict]) -> None:
    """The training recipe's stages: wall time and samples per second, and the recipe's total."""
    print("\n| stage | steps × batch | wall time (h:mm) | samples/s |\n|---|---|---|---|")
    for stage in stages:
        rate = stage["steps"] * stage["batch_size"] / stage["seconds"]
        print(
            f"| {stage['stage']} | {stage['steps']} × {stage['batch_size']} | {clock(stage['seconds'])} | {rate:.1f} |"
        )
    print(f"\ntraining recipe wall time {clock(sum(stage['seconds'] for stage in stages))} (h:mm)")


def save_curve(means: dict, args, paths: list[Path]) -> None:
    """PSNR against K for EDN and Levin, between the gray floor and the latent ceiling."""
    counts = args.hint_counts
    figure = Figure(figsize=(6.4, 4.2))
    axes = figure.subplots()
    axes.plot(counts, [means[edn_row(args.label, k)]["PSNR"] for k in counts], "o-", label=args.label)
    axes.plot(counts[1:], [means[levin_row(k)]["PSNR"] for k in counts[1:]], "s-", label="Levin et al. 2004")
    axes.axhline(means[CEILING]["PSNR"], color="black", linestyle="--", label=CEILING)
    axes.axhline(means[FLOOR]["PSNR"], color="gray", linestyle=":", label=FLOOR)
    axes.set_xscale("symlog", linthresh=1)  # linear below 1, so K=0 has a place
    axes.set_xticks(counts, [str(k) for k in counts])
    axes.set_xlim(-0.3, counts[-1] * 1.2)
    axes.minorticks_off()
    axes.set_xlabel("ground-truth hints K")
    axes.set_ylabel("PSNR (dB)")
    folders = ", ".join(sorted({path.parent.name for path in paths}))
    axes.set_title(f"PSNR against hints on the {len(paths)} held-out photos ({folders})")
    axes.legend()
    figure.tight_layout()
    figure.savefig(args.curve, dpi=150)


def circled(image: PIL.Image.Image, points: list[tuple], scale: float) -> PIL.Image.Image:
    """``image`` (a resized copy) with each hint position circled white inside black, visible on any colour."""
    draw = PIL.ImageDraw.Draw(image)
    for x, y, *_ in points:
        cx, cy = (x + 0.5) * scale, (y + 0.5) * scale
        for radius, colour in ((4, "black"), (3, "white")):
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), outline=colour)
    return image


def save_grid(rows: list[list[tuple[np.ndarray, list]]], path: Path, height: int) -> None:
    """One line per photo, every image ``height`` pixels tall and centred in a column as wide as its widest image,
    so that the columns line up whatever the photos' orientation; 4 pixels of white between images."""
    gap = 4
    cells = []
    for row in rows:
        scale = height / row[0][0].shape[0]
        size = (round(row[0][0].shape[1] * scale), height)
        cells.append([circled(PIL.Image.fromarray(image).resize(size), points, scale) for image, points in row])
    widths = [max(line[column].width for line in cells) for column in range(len(cells[0]))]
    grid = PIL.Image.new("RGB", (sum(widths) + gap * (len(widths) - 1), len(cells) * (height + gap) - gap), "white")
    for number, line in enumerate(cells):
        left = 0
        for image, width in zip(line, widths):
            grid.paste(image, (left + (width - image.width) // 2, number * (height + gap)))
            left += width + gap
    grid.save(path)


def write_json(path: Path, report: dict) -> None:
    """Atomically, through a temporary file in the same folder, so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as file:
        json.dump(report, file, indent=2, ensure_ascii=False)
    os.chmod(file.name, 0o644)  # a temporary file is private; the report is not
    os.replace(file.name, path)


def main() -> None:
    args = parse_args()
    stages = json.loads(args.timings.read_text())["stages"] if args.timings else None  # fail before the long run
    pipe = EDNPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    paths = held_out_photos(args.data)
    strength = args.strength or pipe.config.default_strength
    print(
        f"{len(paths)} held-out photos from {args.data} (longer side <= {args.max_side}); model {args.model}, "
        f"{args.steps} steps, strength {strength}, guidance {args.guidance}, hint guidance {args.hint_guidance}, "
        f"token refinement {args.vq_steps} steps (None: the decoder's) at temperature {args.temperature}, "
        f"truncation {args.truncation_rate}, seed {args.seed}",
        flush=True,
    )

    scores, words, truth, grid = evaluate(pipe, args, paths)
    means = {
        row: {metric: statistics.mean(values) for metric, values in row_scores.items()}
        for row, row_scores in scores.items()
    }
    generic = means[edn_row(args.label, 0)]["PSNR"]
    words = None if args.skip_words else summarise_words(words, generic)
    targets = check_targets(means, words, args)
    print_report(means, words, targets, truth, args)
    if stages is not None:
        print_timings(stages)
    if args.json is not None:
        settings = {
            key: getattr(args, key)
            for key in (
                "steps",
                "guidance",
                "hint_guidance",
                "vq_steps",
                "temperature",
                "truncation_rate",
                "seed",
                "max_side",
                "hint_radius",
            )
        }
        write_json(
            args.json,
            {
                "photos": len(paths),
                "data": str(args.data),
                "model": args.model,
                "strength": strength,
                **settings,
                "rows": means,
                "ground-truth colourfulness": truth,
                "words": words,
                "targets": [{"holds": holds, "target": text} for holds, text in targets],
            },
        )
        print(f"\nwrote {args.json}")
    if args.curve is not None:
        save_curve(means, args, paths)
        print(f"wrote {args.curve}")
    if args.grid is not None:
        save_grid(grid, args.grid, args.grid_height)
        print(
            f"wrote {args.grid}: columns grayscale input, {args.label} K=0, {args.label} K={args.grid_hints} and "
            f"Levin K={args.grid_hints} (hints circled), original"
        )


if __name__ == "__main__":
    main()
