"""``edn colorize``: colourise image and video files, folders and globs into an output folder.

Every input is checked before the model loads: its header read, its output path free of collisions; a second run
skips the outputs that are whole. One failing input is named and skipped, the others are done (exit status 1).
"""

import argparse
import glob
import itertools
import json
import os
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import PIL.Image

from ..errors import EDNInputError, one_line
from ..files import IMAGE_SUFFIXES, VIDEO_SUFFIXES, atomic_write, remove_stale_temporaries
from .common import (
    DEFAULT_MAX_MEGAPIXELS,
    MODEL_HELP,
    CLIError,
    add_runtime_arguments,
    check_device,
    check_writable_folder,
    generation_settings,
    load_pipeline,
    non_negative_float,
    non_negative_int,
    pixel_limit,
    positive_float,
    positive_int,
    seed,
    shown,
    torch_settings,
    unit_fraction,
)

# What PIL may decode an input as, whatever its name: photo formats that need no external program (EPS would
# run Ghostscript on a file that merely calls itself .png).
INPUT_FORMATS = ("BMP", "GIF", "JPEG", "JPEG2000", "PNG", "PPM", "TIFF", "WEBP")
# zlib level of the PNG outputs. For a large scan, encoding at Pillow's default 6 costs more than the model: 3 s
# for a grainy 12-megapixel output. Level 3 encoded 16 photos (0.15 to 12 megapixels) 2.5 times as fast, and its
# files were 4 % smaller; level 1 was 1.5 times faster again, at 10 % larger (Pillow 12.3, zlib-ng). On four
# grainy 12-megapixel scans it took edn colorize's wall time to 0.66 of level 6's.
PNG_COMPRESS_LEVEL = 3


class UnreadableImage(Exception):
    """An input that cannot be decoded, or is over the pixel limit: that input is skipped, the batch goes on."""


def parse_hint(text: str) -> tuple | dict:
    """``x,y,#rrggbb`` or ``x,y,#rrggbb,radius``; ``frame:x,y,#rrggbb[,radius]`` for a video's frame (a dict)."""
    frame, _, point = text.partition(":") if ":" in text.split(",")[0] else ("", "", text)
    parts = point.split(",")
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError(f"hint {text!r} is not [frame:]x,y,#rrggbb[,radius]")
    try:
        numbers = [float(parts[0]), float(parts[1])] + ([float(parts[3])] if len(parts) == 4 else [])
    except ValueError:
        raise argparse.ArgumentTypeError(f"hint {text!r}: x, y and radius must be numbers") from None
    if not frame:
        return (numbers[0], numbers[1], parts[2], *numbers[2:])
    if not frame.isdigit():
        raise argparse.ArgumentTypeError(f"hint {text!r}: the frame must be an integer >= 0")
    radius = {"radius": numbers[2]} if len(numbers) == 3 else {}
    return {"frame": int(frame), "x": numbers[0], "y": numbers[1], "color": parts[2], **radius}


def find_inputs(patterns: list[str], out_dir: Path) -> list[tuple[Path, Path]]:
    """(input, output path relative to ``out_dir``) for files, folders and glob patterns, in a stable order.

    A folder gives its images and videos recursively, except those under ``out_dir``, and its subfolders are mirrored
    in the outputs; a file (named or matched) keeps only its name. A file found twice counts once. An image's output
    is a PNG, a video's has its suffix.
    """
    suffixes = IMAGE_SUFFIXES | VIDEO_SUFFIXES
    out_resolved = out_dir.resolve()
    found: dict[Path, tuple[Path, Path]] = {}
    for pattern in patterns:
        literal = os.path.lexists(pattern) or not glob.has_magic(pattern)  # a file named "scan[1].png" is a file
        matches = [pattern] if literal else sorted(glob.glob(pattern, recursive=True))
        if not matches:
            raise CLIError(f"no input matches {pattern!r}")
        for match in map(Path, matches):
            if match.is_dir():
                images = [
                    p
                    for p in sorted(match.rglob("*"))
                    if p.suffix.lower() in suffixes and p.is_file() and out_resolved not in p.resolve().parents
                ]
                if not images:
                    listed = ", ".join(sorted(suffixes))
                    raise CLIError(f"no images in folder {shown(match)} (outside --out; looked for {listed})")
                for path in images:
                    found.setdefault(path.resolve(), (path, output_name(path.relative_to(match))))
            elif match.is_file():
                found.setdefault(match.resolve(), (match, output_name(Path(match.name))))
            elif match.exists():
                raise CLIError(f"input {shown(match)} is not a file or a folder")
            else:
                raise CLIError(f"input {shown(match)} does not exist")
    return list(found.values())


def is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_SUFFIXES


def output_name(path: Path) -> Path:
    return path if is_video(path) else path.with_suffix(".png")


def output_paths(inputs: list[tuple[Path, Path]], out_dir: Path) -> list[tuple[Path, Path]]:
    """(input, output) pairs; two inputs that would write one output, or an output that is an input, are refused.

    Names differing only in case count as one, as they are on macOS and Windows.
    """
    resolved_inputs = {path.resolve() for path, _ in inputs}
    first: dict[str, Path] = {}
    pairs = []
    for path, relative in inputs:
        out = out_dir / relative
        key = str(relative).casefold()
        if key in first:
            remedy = "rename one" if path.parent == first[key].parent else "give their common folder as the input"
            raise CLIError(
                f"inputs {shown(first[key])} and {shown(path)} would both be written to {shown(out)}; {remedy}, or "
                "colourise them into different --out folders"
            )
        if out.resolve() in resolved_inputs:
            raise CLIError(f"the output of {shown(path)} would replace the input {shown(out)}; choose another --out")
        first[key] = path
        pairs.append((path, out))
    return pairs


def check_out_folder(out: str) -> None:
    """--out once, before any work: an existing folder to write in, or a new one in an existing folder."""
    path = Path(out)
    if out == "":
        raise CLIError("--out is empty")
    if path.exists() and not path.is_dir():
        raise CLIError(f"--out {shown(out)} exists and is not a folder")
    check_writable_folder("--out", out, path if path.is_dir() else path.parent)


def load_hints_file(path: str) -> dict:
    """A JSON object mapping an input's file name (or path) to its list of ``[x, y, colour(, radius)]``."""
    if not Path(path).is_file():
        raise CLIError(f"hints file {shown(path)} {'is not a file' if Path(path).exists() else 'does not exist'}")
    try:
        with open(path, encoding="utf-8-sig") as f:
            hints = json.load(f)
    except (OSError, ValueError, RecursionError) as error:  # ValueError: not UTF-8, or not JSON
        raise CLIError(f"cannot read hints file {shown(path)} as UTF-8 JSON: {one_line(error)}") from None
    if not isinstance(hints, dict):
        raise CLIError(f"hints file {shown(path)} must hold a JSON object mapping file names to hint lists")
    for name, value in hints.items():
        if not isinstance(value, list):
            raise CLIError(f"hints file {shown(path)}: the hints of {name!r} are not a list of [x, y, colour]")
    return hints


def check_steps(pipe, steps: int, strength: float | None) -> None:
    """Steps the model's scheduler can take, and at least one left after ``strength``: once, as a usage error."""
    trained = pipe.scheduler.config.num_train_timesteps
    if steps > trained:
        raise CLIError(f"--steps {steps} is more than the {trained} steps this model's scheduler was trained with")
    if strength is None:
        strength = pipe.config.default_strength
        if isinstance(strength, bool) or not isinstance(strength, (int, float)) or not 0 < strength <= 1:
            raise CLIError(f"this model's default_strength {strength!r} is not in (0, 1]; give --strength")
    if int(steps * strength) < 1:
        least = next(n for n in itertools.count(steps + 1) if int(n * strength) >= 1)
        raise CLIError(f"--steps {steps} at strength {strength:g} leaves no step to run; give --steps {least} or more")


def check_refinement(pipe, vq_steps: int | None, temperature: float, truncation_rate: float | None) -> None:
    """Token refinement the model's decoder can do: once, as a usage error, before any input is colourised."""
    refiner = getattr(pipe.decoder, "refiner", None)
    if refiner is None:
        asked = [flag for flag, given in (("--vq-steps", vq_steps), ("--truncation-rate", truncation_rate)) if given]
        asked += ["--temperature"] if temperature != 1.0 else []
        if asked:
            raise CLIError(f"{asked[0]} needs a token refiner, and this model's decoder has none")
        return
    limit = pipe.decoder.config.vq_num_train_timesteps
    if vq_steps is not None and vq_steps > limit:
        raise CLIError(f"--vq-steps {vq_steps} is more than the {limit} steps this model's token refiner has")


def read_image(path: Path, decode: bool = True) -> PIL.Image.Image | None:
    """The decoded image; with ``decode=False`` only its header is read, to refuse what cannot be read early."""
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=UserWarning, module="PIL")  # "Corrupt EXIF data": pixels decide
            with PIL.Image.open(path, formats=INPUT_FORMATS) as image:
                if decode:
                    image.load()
                    return image.copy()
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning):
        raise UnreadableImage(
            f"larger than the limit of {PIL.Image.MAX_IMAGE_PIXELS / 1e6:g} megapixels (--max-megapixels)"
        ) from None
    except Exception as error:  # a malformed file can make PIL's decoders fail in any way, not only with OSError
        raise UnreadableImage(one_line(error)) from None
    return None


def read_header(path: Path) -> None:
    """Refuse an input whose header does not read, or declares frames over the pixel limit, before the model loads."""
    if not is_video(path):
        read_image(path, decode=False)
        return
    from ..video_io import probe_video

    try:
        info = probe_video(path)
    except EDNInputError as error:
        raise UnreadableImage(error) from None
    if info.width * info.height > PIL.Image.MAX_IMAGE_PIXELS:
        raise UnreadableImage(
            f"frames larger than the limit of {PIL.Image.MAX_IMAGE_PIXELS / 1e6:g} megapixels (--max-megapixels)"
        )


def whole_image_problem(path: Path) -> str | None:
    """Why an existing output is not a whole image (so it is redone, not skipped), or None if it is one."""
    try:
        with PIL.Image.open(path) as image:
            image.verify()  # the PNG's chunks and checksums, to its end, without decoding
    except Exception as error:  # any failure to read it back means it is not a done output
        return one_line(error)
    return None


def save_atomically(image: PIL.Image.Image, path: Path) -> None:
    """No half-written image is ever seen, even if the run is killed while saving."""
    with atomic_write(path) as f:
        image.save(f, format="PNG", compress_level=PNG_COMPRESS_LEVEL)


def batches_by_working_size(pipe, items, batch_size: int):
    """Consecutive runs of images that share a working size (one pipeline call each), at most batch_size long."""
    batch, size = [], None
    for item in items:
        item_size = pipe.working_size(*item[2].size)
        if batch and (item_size != size or len(batch) == batch_size):
            yield batch
            batch = []
        batch.append(item)
        size = item_size
    if batch:
        yield batch


def report_failure(failed: list[Path], path: Path, message) -> None:
    """One line naming a skipped input, printed above the progress bar, if any; the input counts as failed."""
    from tqdm.auto import tqdm

    failed.append(path)
    tqdm.write(f"edn: skipped {shown(path)}: {one_line(message)}", file=sys.stderr)


def pending(pairs: list[tuple[Path, Path]], overwrite: bool) -> list[tuple[Path, Path]]:
    """The (input, output) pairs still to do: an output that is a whole image is done, unless ``overwrite``.

    First the temporary files a killed run left beside these outputs are deleted.
    """
    removed = remove_stale_temporaries(out for _, out in pairs)
    if removed:
        print(f"edn: removed {removed} temporary file(s) an interrupted run left beside the outputs", file=sys.stderr)
    todo = []
    for path, out in pairs:
        if not overwrite and os.path.lexists(out):
            if is_video(out):
                from ..video_io import video_problem

                kind, problem = "video", video_problem(out)
            else:
                kind, problem = "image", whole_image_problem(out)
            if problem is None:
                continue
            print(f"edn: redoing {shown(out)}: not a whole {kind} ({problem})", file=sys.stderr)
        todo.append((path, out))
    if len(todo) < len(pairs):
        print(f"edn: skipping {len(pairs) - len(todo)} already colourised (use --overwrite to redo)", file=sys.stderr)
    return todo


def colorize_readable(args: argparse.Namespace, pipe, pairs: list, hints: dict, failed: list, progress) -> None:
    """Colourise and write ``pairs`` whose headers read; each decoding, pipeline or write failure fails one input.

    Each batch's outputs are written on a thread while the next batch runs (at most one batch waits). PNG encoding
    runs zlib on one core, outside the GIL, and for a large scan it takes about as long as the model. On four
    grainy 12-megapixel scans (2-core CPU) this cut the wall time by 16 %.
    """
    import torch

    image_hints = [hint for hint in args.hint or [] if not isinstance(hint, dict)] or None  # not a video's frames

    def decoded():
        for path, out in pairs:
            try:
                yield path, out, read_image(path)
            except UnreadableImage as error:
                report_failure(failed, path, error)
                progress.update(1)

    def run(batch: list) -> list:
        """One pipeline call for the batch, each image with the generator it would get alone: (path, out, result)."""
        images = pipe(
            [image for _, _, image in batch],
            prompt=args.prompt,
            hints=[hints.get(str(path), hints.get(path.name, image_hints)) for path, _, _ in batch],
            generator=[torch.Generator().manual_seed(args.seed) for _ in batch],
            **generation_settings(args),
        ).images
        return [(path, out, result) for (path, out, _), result in zip(batch, images)]

    def colourised(batch: list) -> list:
        try:
            return run(batch)
        except EDNInputError:  # find which input it was: one call each
            done = []
            for item in batch:
                try:
                    done += run([item])
                except EDNInputError as error:
                    report_failure(failed, item[0], error)
                    progress.update(1)
            return done

    def settle(writes: list) -> None:
        for path, out, write in writes:
            try:
                write.result()
            except OSError as error:  # a full disk, a folder where the file goes: this input only
                report_failure(failed, path, f"cannot write {shown(out)}: {error.strerror or error}")
            progress.update(1)

    writer, writes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edn-write"), []
    try:
        for batch in batches_by_working_size(pipe, decoded(), args.batch_size):
            results = colourised(batch)
            settle(writes)
            writes = [(path, out, writer.submit(save_atomically, image, out)) for path, out, image in results]
        settle(writes)
    finally:  # interrupted: the write under way finishes (atomically), the ones not started are dropped
        writer.shutdown(wait=True, cancel_futures=True)


def colorize_videos(args: argparse.Namespace, pipe, pairs: list, hints: dict, failed: list, progress) -> None:
    """Colourise each video of ``pairs`` into its output, streamed; a bad video or a failed write fails that one."""
    import torch

    from ..video import EDNVideoPipeline, colorize_video_file

    video_pipe = EDNVideoPipeline(pipe)
    video_pipe.set_progress_bar_config(disable=progress.disable, leave=False)
    for path, out in pairs:
        try:
            colorize_video_file(
                video_pipe,
                path,
                out,
                prompt=args.prompt,
                hints=hints.get(str(path), hints.get(path.name, args.hint or None)),
                generator=torch.Generator().manual_seed(args.seed),
                **generation_settings(args),
            )
        except EDNInputError as error:
            report_failure(failed, path, error)
        except OSError as error:  # a full disk, a folder where the file goes: this input only
            report_failure(failed, path, f"cannot write {shown(out)}: {error.strerror or error}")
        progress.update(1)


def colorize_command(args: argparse.Namespace) -> int:
    try:
        (args.prompt or "").encode("utf-8")
    except UnicodeEncodeError:  # bytes the system's encoding could not decode reach Python as lone surrogates
        raise CLIError("--prompt holds bytes that are not text in this system's encoding") from None
    out_dir = Path(args.out)
    check_out_folder(args.out)
    pairs = output_paths(find_inputs(args.inputs, out_dir), out_dir)
    hints = load_hints_file(args.hints) if args.hints else {}

    import torch
    from accelerate import PartialState
    from tqdm.auto import tqdm

    device = check_device(args.device) if args.device is not None else None
    # One process, or one of several under `accelerate launch` / torchrun (on CPUs too, gloo backend).
    cpu = (device is not None and torch.device(device).type == "cpu") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    device = device or str(state.device)
    failed: list[Path] = []
    with (
        torch_settings(device, args.dtype, args.threads),
        pixel_limit(args.max_megapixels),
        state.split_between_processes(pairs) as mine,  # each process its share of all inputs: the same split in each
    ):
        if any(is_video(path) for path, _ in mine):
            from ..video_io import require

            try:
                for module in ("av", "cv2"):
                    require(module)
            except ImportError as error:
                raise CLIError(str(error)) from None
        readable = []
        for path, out in pending(mine, args.overwrite):  # headers only: bad inputs fail before the model loads
            try:
                read_header(path)
                readable.append((path, out))
            except UnreadableImage as error:
                report_failure(failed, path, error)
        if readable:
            pipe = load_pipeline(args.model, device, args.dtype, args.max_megapixels)
            check_steps(pipe, args.steps, args.strength)
            check_refinement(pipe, args.vq_steps, args.temperature, args.truncation_rate)
            progress = tqdm(
                total=len(readable),
                desc=f"colorizing [{state.process_index}]",
                unit="image",
                disable=None if state.is_local_main_process else True,
            )  # None: on a terminal only
            images = [pair for pair in readable if not is_video(pair[0])]
            colorize_readable(args, pipe, images, hints, failed, progress)
            colorize_videos(args, pipe, [pair for pair in readable if is_video(pair[0])], hints, failed, progress)
            progress.close()
    if state.num_processes > 1:
        print(
            f"edn: process {state.process_index} colourised {len(mine) - len(failed)} of {len(mine)} inputs",
            file=sys.stderr,
        )
    if failed:
        print(f"edn: {len(failed)} of {len(mine)} inputs failed", file=sys.stderr)
        return 1
    return 0


def add_colorize_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``edn colorize`` to the ``edn`` command's subparsers."""
    col = subparsers.add_parser(
        "colorize",
        help="colourise files, folders or globs into --out",
        description="Colourise images into PNG files, and videos into videos of their own format, in --out. A "
        "folder's subfolders are mirrored there; inputs whose outputs would share a name are refused before anything "
        "is done. A second run skips outputs that are whole. Exit status: 0 done, 1 some inputs failed (each named), "
        "2 a bad command line.",
    )
    col.add_argument("inputs", nargs="+", help="image or video files, folders or glob patterns")
    col.add_argument("--out", required=True, help="output folder (PNG files, or videos, named after the inputs)")
    col.add_argument("--model", default=None, help=MODEL_HELP)
    col.add_argument("--prompt", default=None, help="text describing the colours")
    col.add_argument(
        "--hint",
        action="append",
        type=parse_hint,
        help="x,y,#rrggbb[,radius], or frame:x,y,#rrggbb[,radius] on a video's frame; repeatable",
    )
    col.add_argument(
        "--hints",
        help="JSON file: {file name: [[x, y, colour(, radius)], ...]}; a video's hint may name its frame: "
        '{"frame": 12, "x": 40, "y": 30, "color": "#f5c400"}',
    )
    col.add_argument("--steps", type=positive_int, default=50, help="denoising steps (default: %(default)s)")
    col.add_argument(
        "--guidance",
        type=non_negative_float,
        default=5.0,
        help="classifier-free guidance weight (default: %(default)s)",
    )
    col.add_argument(
        "--hint-guidance",
        type=non_negative_float,
        default=1.0,
        help="guidance on the hints against a hint-free prediction; 1 is off (default: %(default)s)",
    )
    col.add_argument(
        "--strength", type=unit_fraction, default=None, help="share of the noise schedule run (default: the model's)"
    )
    refine = col.add_argument_group("token refinement (the decoder's VQ-Diffusion refiner)")
    refine.add_argument(
        "--vq-steps",
        type=non_negative_int,
        default=None,
        help="refinement steps; 0 turns it off (default: the model's own, 0 for edn-tiny)",
    )
    refine.add_argument(
        "--temperature",
        type=positive_float,
        default=1.0,
        help="divides the refiner's token logits: below 1 surer, above 1 more colourful (default: %(default)s)",
    )
    refine.add_argument(
        "--truncation-rate",
        type=unit_fraction,
        default=None,
        help="sample only among the likeliest tokens holding this share of the probability (default: all)",
    )
    col.add_argument("--seed", type=seed, default=0, help="seed of every image's generator (default: %(default)s)")
    add_runtime_arguments(col)
    col.add_argument("--batch-size", type=positive_int, default=1, help="images per pipeline call (default: 1)")
    col.add_argument(
        "--max-megapixels",
        type=positive_float,
        default=DEFAULT_MAX_MEGAPIXELS,
        help="skip larger inputs, judged from their header before decoding (default: %(default)s)",
    )
    col.add_argument("--overwrite", action="store_true", help="redo inputs whose output exists")
    col.set_defaults(run=colorize_command)
    return col
