"""Flicker and fidelity of EDN on video: frame by frame against the video mode (EDNVideoPipeline), in one run.

Clips with ground truth are made from the held-out photos of ``shared/data/photos`` (``bsd100/img_09*`` and
``urban100/img_09*``, never trained on): the camera pans, pans diagonally, zooms in, zooms out, and pans over one
photo then cuts to another half-way; 48 frames of 240×160 each. Each frame is an affine view of the photo (OpenCV,
bilinear), so the true motion between frames is known exactly. Both runs get the frames' 8-bit gray (the ground
truth's L* as neutral gray), the same settings and the same seed. Per clip and run:

* PSNR of every frame, rounded to 8 bits as a file holds it, against its ground-truth frame (dB, mean over frames);
* flicker, as the warp error: the mean CIE a*b* distance between a frame and the previous one warped to it along
  the true motion, over the pixels seen in both (the pair across the cut left out), of the pipelines' float output
  and again after rounding to 8 bits, which adds noise of its own (the ground truth's 8-bit warp error is shown for
  scale: interpolation and rounding only);
* frames per second on this CPU (``--threads`` torch and OpenCV threads; loading the model not counted).

``--clip FILE`` adds a real colour clip (its first ``--frames`` frames at 240 px wide): its motion is unknown, so
its warp error follows DIS flow computed on the ground truth, with forward-backward consistency. Then the peak
memory (Linux's VmHWM, reset once the model is loaded) of the video mode is measured on 48, 96 and 192 generated
frames of 640×360, each in a fresh process that makes the frames lazily: streamed into an .mp4 by
:func:`edn_pipeline.video_io.export_to_video`, and, for comparison, all returned together by
``EDNVideoPipeline.__call__``. Targets: the video mode's warp error at most a fifth of frame by frame's, its PSNR
not lower, its streamed memory flat in clip length.

    python benchmarks/video_consistency.py --data ../shared/data/photos [--clip world.mp4] [--json out.json]
"""

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import diffusers.utils.logging
import numpy as np
import PIL.Image
import torch

from edn_pipeline import EDNPipeline
from edn_pipeline.evaluation.metrics import psnr
from edn_pipeline.luminance import chroma, gray_image, to_uint8
from edn_pipeline.video import EDNVideoPipeline
from edn_pipeline.video_io import export_to_video, read_video

SIZE = (240, 160)  # (width, height) of every clip's frames
# (name, photos, motion, frames): the camera over held-out photos; "cut" shows the second photo from frame 24 on.
CLIPS = [
    ("pan", ["bsd100/img_090.png"], "pan", 48),
    ("pan, diagonal", ["urban100/img_091.png"], "diagonal", 48),
    ("zoom in", ["bsd100/img_093.png"], "zoom_in", 48),
    ("zoom out", ["urban100/img_094.png"], "zoom_out", 48),
    ("pan with a cut", ["bsd100/img_095.png", "urban100/img_096.png"], "pan", 48),
]
# Memory is measured on larger frames, where holding a clip would show: 192 of them take 133 MB as 8-bit RGB.
MEMORY_LENGTHS = (48, 96, 192)
MEMORY_PHOTO, MEMORY_SIZE = "urban100/img_097.png", (640, 360)


def view(photo_size: tuple[int, int], motion: str, t: float, size: tuple[int, int]) -> np.ndarray:
    """The 2×3 affine map from photo to frame pixels (``size``) at time ``t`` in [0, 1] of a camera move.

    The view shows 60 % of the photo's width (the whole width at a zoom's widest), keeping the frame's aspect.
    """
    width, height = photo_size
    span = {"zoom_in": 1.0 - 0.5 * t, "zoom_out": 0.5 + 0.5 * t}.get(motion, 0.6)
    view_w = min(width * span, height * span * size[0] / size[1])
    view_h = view_w * size[1] / size[0]
    centre_x, centre_y = width / 2, height / 2
    if motion == "pan":
        centre_x = view_w / 2 + t * (width - view_w)
    elif motion == "diagonal":
        centre_x, centre_y = view_w / 2 + t * (width - view_w), view_h / 2 + t * (height - view_h)
    scale = size[0] / view_w
    return np.array([[scale, 0, size[0] / 2 - scale * centre_x], [0, scale, size[1] / 2 - scale * centre_y]])


def clip_frames(data: Path, photos: list[str], motion: str, count: int, size: tuple[int, int] = SIZE):
    """Ground-truth frames (uint8 RGB) and each frame's affine map and photo index, lazily."""
    images = [np.asarray(PIL.Image.open(data / name).convert("RGB")) for name in photos]
    per_photo = -(-count // len(images))
    for index in range(count):
        which = index // per_photo
        photo = images[which]
        t = (index - which * per_photo) / max(1, per_photo - 1)
        affine = view((photo.shape[1], photo.shape[0]), motion, t, size)
        yield cv2.warpAffine(photo, affine, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT), affine, which


def true_backward_flow(previous: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each pixel of the current frame was in the previous one (absolute coordinates), and where that is seen."""
    x, y = np.meshgrid(np.arange(SIZE[0], dtype=np.float64), np.arange(SIZE[1], dtype=np.float64))
    inverse = cv2.invertAffineTransform(current)
    photo_x = inverse[0, 0] * x + inverse[0, 1] * y + inverse[0, 2]
    photo_y = inverse[1, 0] * x + inverse[1, 1] * y + inverse[1, 2]
    to_x = previous[0, 0] * photo_x + previous[0, 1] * photo_y + previous[0, 2]
    to_y = previous[1, 0] * photo_x + previous[1, 1] * photo_y + previous[1, 2]
    seen = (to_x >= 0) & (to_x <= SIZE[0] - 1) & (to_y >= 0) & (to_y <= SIZE[1] - 1)
    return np.stack([to_x, to_y], -1).astype(np.float32), seen


def estimated_backward_flow(previous: np.ndarray, current: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The same from DIS flow on the ground truth's gray, with forward-backward consistency (for real clips)."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    a, b = (cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) for frame in (previous, current))
    backward, forward = dis.calc(b, a, None), dis.calc(a, b, None)
    height, width = backward.shape[:2]
    x, y = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    to_x, to_y = x + backward[..., 0], y + backward[..., 1]
    back = cv2.remap(forward, to_x, to_y, cv2.INTER_LINEAR)
    mismatch = ((backward + back) ** 2).sum(-1)
    consistent = mismatch <= 0.01 * ((backward**2).sum(-1) + (back**2).sum(-1)) + 0.25
    seen = consistent & (to_x >= 0) & (to_x <= width - 1) & (to_y >= 0) & (to_y <= height - 1)
    return np.stack([to_x, to_y], -1), seen


def warp_error(frames: list[np.ndarray], flows: list) -> float:
    """Mean a*b* distance between each frame and its predecessor warped to it, over the pixels seen in both."""
    errors = []
    for index, flow in enumerate(flows, start=1):
        if flow is None:  # across a cut
            continue
        coords, seen = flow
        previous, current = chroma(frames[index - 1]), chroma(frames[index])
        warped = cv2.remap(previous, coords[..., 0], coords[..., 1], cv2.INTER_LINEAR)
        errors.append(float(np.linalg.norm(current - warped, axis=-1)[seen].mean()))
    return float(np.mean(errors))


def frame_by_frame(pipe: EDNPipeline, grays: list[np.ndarray], settings: dict) -> tuple[list[np.ndarray], int]:
    """(a): every frame colourised on its own, with the same seed; float frames, and the EDN calls made."""
    frames = [
        pipe(
            gray, generator=torch.Generator().manual_seed(settings["seed"]), output_type="np", **settings["call"]
        ).images[0]
        for gray in grays
    ]
    return frames, len(frames)


def video_mode(video_pipe: EDNVideoPipeline, grays: list[np.ndarray], settings: dict) -> tuple[list[np.ndarray], int]:
    """(b): EDNVideoPipeline; float frames, and the EDN calls made (its keyframes)."""
    out = video_pipe(
        grays, generator=torch.Generator().manual_seed(settings["seed"]), output_type="np", **settings["call"]
    )
    return list(out.frames[0]), len(out.keyframes)


def memory_probe(args: argparse.Namespace) -> None:
    """In a fresh process: colourise a generated clip of ``--probe-length`` frames, streamed into an .mp4 or (for
    comparison) returned together as ``EDNVideoPipeline.__call__`` does; print the peak RSS in MB while doing so."""
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    video_pipe = EDNVideoPipeline(EDNPipeline.from_pretrained(args.model))
    video_pipe.pipe.set_progress_bar_config(disable=True)
    video_pipe.set_progress_bar_config(disable=True)
    made = clip_frames(args.data, [MEMORY_PHOTO], "pan", args.probe_length, MEMORY_SIZE)
    grays = (gray_image(frame) for frame, _, _ in made)
    settings = dict(
        num_inference_steps=args.steps,
        guidance_scale=args.guidance,
        strength=args.strength,
        generator=torch.Generator().manual_seed(args.seed),
    )
    with open("/proc/self/clear_refs", "w") as clear:  # Linux: the peak RSS starts again from here, after loading
        clear.write("5")
    if args.probe_mode == "together":
        video_pipe(grays, **settings)
    else:
        with tempfile.TemporaryDirectory() as folder:
            export_to_video(video_pipe.stream(grays, **settings), Path(folder) / "clip.mp4", fps=24)
    with open("/proc/self/status") as status:
        print(next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024)  # kB


def peak_memory_mb(args: argparse.Namespace, length: int, mode: str) -> float:
    command = [
        sys.executable,
        __file__,
        "--data",
        str(args.data),
        "--threads",
        str(args.threads),
        "--steps",
        str(args.steps),
        "--guidance",
        str(args.guidance),
        "--seed",
        str(args.seed),
    ]
    command += ["--probe-length", str(length), "--probe-mode", mode]
    command += ["--model", args.model] if args.model else []
    command += ["--strength", str(args.strength)] if args.strength is not None else []
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.split()[-1])


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="shared/data/photos (its held-out photos are used)")
    parser.add_argument("--model", default=None, help="an EDN folder or Hub id (default: edn-tiny)")
    parser.add_argument("--clip", type=Path, action="append", default=[], help="a real colour video; repeatable")
    parser.add_argument("--frames", type=int, default=96, help="frames taken from each --clip (default: 96)")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--strength", type=float, default=None, help="default: the model's default_strength")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch and OpenCV threads (default: 1)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--probe-length", type=int, help=argparse.SUPPRESS)  # the memory probe's child process
    parser.add_argument("--probe-mode", choices=("streamed", "together"), help=argparse.SUPPRESS)
    return parser.parse_args()


def real_clip(path: Path, count: int):
    """The first ``count`` frames of a colour video, resized to SIZE's width (aspect kept, even height)."""
    for frame in itertools.islice(read_video(path), count):
        height = 2 * round(frame.shape[0] * SIZE[0] / frame.shape[1] / 2)
        yield cv2.resize(frame, (SIZE[0], height), interpolation=cv2.INTER_AREA)


def main() -> None:
    args = parse_args()
    diffusers.utils.logging.disable_progress_bar()
    if args.probe_length:
        memory_probe(args)
        return
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    pipe = EDNPipeline.from_pretrained(args.model)
    pipe.set_progress_bar_config(disable=True)
    video_pipe = EDNVideoPipeline(pipe)
    video_pipe.set_progress_bar_config(disable=True)
    call = dict(num_inference_steps=args.steps, guidance_scale=args.guidance, strength=args.strength)
    settings = dict(seed=args.seed, call=call)

    clips = []
    for name, photos, motion, count in CLIPS:
        made = list(clip_frames(args.data, photos, motion, count))
        truth = [frame for frame, _, _ in made]
        flows = [None if b[2] != a[2] else true_backward_flow(a[1], b[1]) for a, b in zip(made, made[1:])]
        clips.append((name, truth, flows))
    for path in args.clip:
        truth = list(real_clip(path, args.frames))
        clips.append(
            (
                f"{path.name} (real, {len(truth)} frames)",
                truth,
                [estimated_backward_flow(a, b) for a, b in zip(truth, truth[1:])],
            )
        )

    rows, totals = [], {"frame by frame": [0, 0.0], "video mode": [0, 0.0]}
    for name, truth, flows in clips:
        grays = [gray_image(frame) for frame in truth]
        row = {"clip": name, "frames": len(truth), "ground truth warp error": warp_error(truth, flows)}
        for label, run in (("frame by frame", frame_by_frame), ("video mode", video_mode)):
            start = time.perf_counter()
            frames, calls = run(video_pipe if label == "video mode" else pipe, grays, settings)
            seconds = time.perf_counter() - start
            totals[label][0] += len(frames)
            totals[label][1] += seconds
            saved = [to_uint8(frame) for frame in frames]  # what a video file or an image holds
            row[label] = {
                "psnr": float(np.mean([psnr(frame, gt) for frame, gt in zip(saved, truth)])),
                "warp error": warp_error(frames, flows),
                "warp error 8-bit": warp_error(saved, flows),
                "fps": len(frames) / seconds,
                "edn calls": calls,
            }
        rows.append(row)
        print(json.dumps(row), flush=True)

    memory = {mode: {n: peak_memory_mb(args, n, mode) for n in MEMORY_LENGTHS} for mode in ("streamed", "together")}
    results = {
        "rows": rows,
        "fps": {k: n / s for k, (n, s) in totals.items()},
        "peak_rss_mb": memory,
        "threads": args.threads,
        "size": SIZE,
    }

    print(f"\n{SIZE[0]}×{SIZE[1]} frames, {args.threads} thread(s)\n")
    print("| clip | run | PSNR (dB) | warp error | warp error, 8-bit | frames/s | EDN calls |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['clip']} | ground truth | | | {row['ground truth warp error']:.3f} | | |")
        for label in ("frame by frame", "video mode"):
            r = row[label]
            print(
                f"| | {label} | {r['psnr']:.2f} | {r['warp error']:.3f} | {r['warp error 8-bit']:.3f} | "
                f"{r['fps']:.2f} | {r['edn calls']} |"
            )
    keys = ("psnr", "warp error", "warp error 8-bit")
    mean = {label: {k: float(np.mean([row[label][k] for row in rows])) for k in keys} for label in totals}
    for label in totals:
        m = mean[label]
        print(
            f"| **mean** | {label} | {m['psnr']:.2f} | {m['warp error']:.3f} | {m['warp error 8-bit']:.3f} | "
            f"{results['fps'][label]:.2f} | |"
        )
    size = "×".join(map(str, MEMORY_SIZE))
    print(f"\nPeak memory (MB RSS of the whole process, model loaded) of the video mode on {size} frames\n")
    print("| frames | " + " | ".join(map(str, MEMORY_LENGTHS)) + " |")
    print("|---|" + "---|" * len(MEMORY_LENGTHS))
    for mode, label in (("streamed", "streamed into an .mp4"), ("together", "all returned together (`__call__`)")):
        print(f"| {label} | " + " | ".join(f"{memory[mode][n]:.0f}" for n in MEMORY_LENGTHS) + " |")

    ratio = mean["video mode"]["warp error"] / mean["frame by frame"]["warp error"]
    ratio_8bit = mean["video mode"]["warp error 8-bit"] / mean["frame by frame"]["warp error 8-bit"]
    psnr_gain = mean["video mode"]["psnr"] - mean["frame by frame"]["psnr"]
    checks = {
        f"warp error of the video mode at most 1/5 of frame by frame's (ratio {ratio:.3f})": ratio <= 0.2,
        f"the same after 8-bit rounding (ratio {ratio_8bit:.3f})": ratio_8bit <= 0.2,
        f"PSNR of the video mode not below frame by frame's ({psnr_gain:+.2f} dB)": psnr_gain >= 0,
        "memory flat in clip length, streamed (within 2 %)": max(memory["streamed"].values())
        <= 1.02 * min(memory["streamed"].values()),
    }
    print()
    for check, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}: {check}")
    results["mean"], results["checks"] = mean, checks
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
