"""The ``edn`` command line: ``edn colorize``, ``edn evaluate``, ``edn demo`` and ``edn export-hub``.

torch, diffusers and transformers are imported inside the commands, when one runs, so that ``edn --help`` and
every usage error answer at once. Every problem is one line on stderr: exit status 2 for a bad command line
(checked before any work starts), 1 when some inputs of a batch failed (each named; the others are done).
"""

import argparse
import glob
import itertools
import json
import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import PIL.Image

from .demo import add_demo_parser
from .errors import EDNInputError, one_line
from .evaluate import add_evaluate_parser
from .files import IMAGE_SUFFIXES, VIDEO_SUFFIXES, atomic_write, remove_stale_temporaries

DTYPES = ("bfloat16", "float16", "float32")  # torch dtype names (torch is imported only when a command runs)
MODEL_HELP = "a Hub id or a local folder saved with save_pretrained (default: edn-tiny, shipped with edn)"
# An A4 page scanned at 1,000 dpi is 97 megapixels; a larger one is more likely a broken or hostile header.
DEFAULT_MAX_MEGAPIXELS = 100.0  # as EDNImageProcessor.max_pixels
MAX_SEED = 2**64 - 1  # the range of torch.Generator.manual_seed
# What PIL may decode an input as, whatever its name: photo formats that need no external program (EPS would
# run Ghostscript on a file that merely calls itself .png).
INPUT_FORMATS = ("BMP", "GIF", "JPEG", "JPEG2000", "PNG", "PPM", "TIFF", "WEBP")


class CLIError(Exception):
    """A problem with the command line itself: reported in one line, exit status 2."""


class UnreadableImage(Exception):
    """An input that cannot be decoded, or is over the pixel limit: that input is skipped, the batch goes on."""


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line like every other error of edn; the usage itself is one ``--help`` away."""

    def error(self, message: str):
        self.exit(2, f"edn: {message} (see {self.prog} --help)\n")


def shown(path) -> str:
    """A path as it can be printed on one line (quoted, with escapes, if it holds a newline or undecodable bytes)."""
    return str(path) if str(path).isprintable() else repr(str(path))


# ------------------------------------------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def unit_fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


def seed(text: str) -> int:
    value = int(text)
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 2**64-1, got {text}")
    return value


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def thread_count(text: str) -> int:
    value, cpus = int(text), usable_cpus()
    if not 1 <= value <= cpus:
        raise argparse.ArgumentTypeError(f"must be from 1 to {cpus} (the CPUs this process may use), got {value}")
    return value


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


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """--device, --dtype and --threads, as every command that runs a model takes them."""
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda if there is one)")
    parser.add_argument("--dtype", choices=DTYPES, default="float32", help="float16 needs a GPU (default: float32)")
    parser.add_argument(
        "--threads",
        type=thread_count,
        default=max(1, usable_cpus() // 2),
        help="torch's CPU threads (default: half the CPUs, here %(default)s: torch's threads wait for each other, "
        "so with one per core a core busy elsewhere stalls them all)",
    )


# ------------------------------------------------------------------------------------------------- shared checks


def check_device(name: str) -> str:
    """``name`` if this machine has that device; a CLIError saying what it has otherwise."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError:
        raise CLIError(f"--device {name!r} is not a device name (cpu, cuda, cuda:1, mps, ...)") from None
    if device.type == "cpu":
        return name
    accelerator = torch.accelerator.current_accelerator()
    if accelerator is None or accelerator.type != device.type:
        has = f"its accelerator is {accelerator.type}" if accelerator is not None else "it has only the cpu"
        raise CLIError(f"--device {name!r}: this machine has no {device.type} device ({has})")
    count = torch.accelerator.device_count()
    if device.index is not None and device.index >= count:
        raise CLIError(f"--device {name!r}: this machine has {count} {device.type} device(s), numbered from 0")
    return name


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@contextmanager
def torch_settings(device: str, dtype: str, threads: int):
    """Refuse float16 on a CPU (it runs there several times slower than float32); torch on ``threads`` threads."""
    import torch

    if dtype == "float16" and torch.device(device).type == "cpu":
        raise CLIError("--dtype float16 runs several times slower than float32 on a CPU; use it on a GPU")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def pixel_limit(megapixels: float):
    """PIL refuses images over ``megapixels`` when it reads their header, before decoding a pixel.

    PIL itself only warns between its limit and twice it; here both raise, and are reported as one skipped input.
    """
    previous = PIL.Image.MAX_IMAGE_PIXELS
    PIL.Image.MAX_IMAGE_PIXELS = max(1, int(megapixels * 1e6))
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            yield
    finally:
        PIL.Image.MAX_IMAGE_PIXELS = previous


def check_output_file(flag: str, path: str) -> None:
    """A report file named by ``flag`` must be writable before hours of work, not after (missing folders are made)."""
    target = Path(path)
    if path == "":
        raise CLIError(f"{flag} is empty")
    if target.is_dir():
        raise CLIError(f"{flag} {shown(path)} is a folder, not a file name")
    existing = next(folder for folder in target.absolute().parents if os.path.lexists(folder))
    check_writable_folder(flag, path, existing)


def check_writable_folder(flag: str, value, folder: Path) -> None:
    if not folder.is_dir():
        problem = "is not a folder" if os.path.lexists(folder) else "does not exist"
        raise CLIError(f"{flag} {shown(value)}: {shown(folder)} {problem}")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise CLIError(f"{flag} {shown(value)}: cannot write in {shown(folder)}: {error.strerror or error}") from None


def load_pipeline(model: str | None, device: str, dtype: str, max_megapixels: float | None = None):
    """The named model, or edn-tiny when ``model`` is None, quietly: no loading progress bars or log lines; with
    ``max_megapixels``, its image processor takes inputs up to that size (the command's --max-megapixels)."""
    import diffusers.utils.logging
    import torch
    import transformers.utils.logging

    from .pipeline_edn import EDNPipeline

    for logging in (diffusers.utils.logging, transformers.utils.logging):
        logging.disable_progress_bar()
        logging.set_verbosity_error()
    try:
        pipe = EDNPipeline.from_pretrained(model, dtype=getattr(torch, dtype))
    except Exception as error:  # a malformed model folder can make diffusers fail in any way, not only OSError
        raise CLIError(f"cannot load model {model!r}: {one_line(error)}") from None
    pipe.set_progress_bar_config(disable=True)
    if max_megapixels is not None:
        limit = int(max_megapixels * 1e6)
        pipe.image_processor = type(pipe.image_processor).from_config(pipe.image_processor.config, max_pixels=limit)
    return pipe.to(device)


# ------------------------------------------------------------------------------------------------- colorize


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
    from .video_io import probe_video

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
        image.save(f, format="PNG")


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
                from .video_io import video_problem

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
    """Colourise and write ``pairs`` whose headers read; each decoding, pipeline or write failure fails one input."""
    import torch

    image_hints = [hint for hint in args.hint or [] if not isinstance(hint, dict)] or None  # not a video's frames

    def decoded():
        for path, out in pairs:
            try:
                yield path, out, read_image(path)
            except UnreadableImage as error:
                report_failure(failed, path, error)
                progress.update(1)

    def run(batch: list) -> None:
        """One pipeline call for the batch; every image gets the generator it would get alone."""
        images = pipe(
            [image for _, _, image in batch],
            prompt=args.prompt,
            hints=[hints.get(str(path), hints.get(path.name, image_hints)) for path, _, _ in batch],
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            strength=args.strength,
            generator=[torch.Generator().manual_seed(args.seed) for _ in batch],
        ).images
        for (path, out, _), result in zip(batch, images):
            try:
                save_atomically(result, out)
            except OSError as error:  # a full disk, a folder where the file goes: this input only
                report_failure(failed, path, f"cannot write {shown(out)}: {error.strerror or error}")

    for batch in batches_by_working_size(pipe, decoded(), args.batch_size):
        try:
            run(batch)
        except EDNInputError:  # find which input it was: one call each
            for item in batch:
                try:
                    run([item])
                except EDNInputError as error:
                    report_failure(failed, item[0], error)
        progress.update(len(batch))


def colorize_videos(args: argparse.Namespace, pipe, pairs: list, hints: dict, failed: list, progress) -> None:
    """Colourise each video of ``pairs`` into its output, streamed; a bad video or a failed write fails that one."""
    import torch

    from .video import EDNVideoPipeline, colorize_video_file

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
                num_inference_steps=args.steps,
                guidance_scale=args.guidance,
                strength=args.strength,
                generator=torch.Generator().manual_seed(args.seed),
            )
        except EDNInputError as error:
            report_failure(failed, path, error)
        except OSError as error:  # a full disk, a folder where the file goes: this input only
            report_failure(failed, path, f"cannot write {shown(out)}: {error.strerror or error}")
        progress.update(1)


def colorize(args: argparse.Namespace) -> int:
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
            from .video_io import require

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


# ------------------------------------------------------------------------------------------------- export-hub


def export_hub_command(args: argparse.Namespace) -> int:
    from .training.hub_export import export_hub

    if not Path(args.model_dir).exists() and "/" not in args.model_dir:
        raise CLIError(f"model {args.model_dir!r} is neither a folder nor a Hub id")
    try:
        out = export_hub(args.model_dir, args.out_dir)
    except (OSError, ValueError) as error:
        raise CLIError(f"cannot export {args.model_dir!r}: {one_line(error)}") from None
    print(f"wrote {out}: load it with DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="edn", description="Colourise grayscale photos with EDN.")
    commands = parser.add_subparsers(dest="command", required=True)
    col = commands.add_parser(
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
        "--strength", type=unit_fraction, default=None, help="share of the noise schedule run (default: the model's)"
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
    col.set_defaults(run=colorize)
    add_evaluate_parser(commands)
    add_demo_parser(commands)
    export = commands.add_parser("export-hub", help="write a Hub repo folder that plain diffusers loads")
    export.add_argument("model_dir", help="an EDN pipeline folder or Hub id")
    export.add_argument("out_dir", help="the repo folder to write: new, empty or an earlier export (replaced)")
    export.set_defaults(run=export_hub_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CLIError, EDNInputError) as error:
        print(f"edn: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("edn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
