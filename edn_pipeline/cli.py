"""The ``edn`` command line: ``edn colorize``, ``edn evaluate``, ``edn demo`` and ``edn export-hub``."""

import argparse
import glob
import json
import sys
from pathlib import Path

import PIL.Image
import torch
from tqdm.auto import tqdm

from .errors import EDNInputError
from .demo import add_demo_parser
from .evaluate import add_evaluate_parser
from .files import IMAGE_SUFFIXES, atomic_write

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
MODEL_HELP = "a Hub id or a local folder saved with save_pretrained (default: edn-tiny, shipped with edn)"


class CLIError(Exception):
    """A problem with the command line itself: reported in one line, exit status 2."""


def find_inputs(patterns: list[str]) -> list[Path]:
    """Files, folders (their images, recursively) and glob patterns, in a stable order without repeats."""
    found: dict[Path, None] = {}
    for pattern in patterns:
        matches = sorted(glob.glob(pattern, recursive=True)) if glob.has_magic(pattern) else [pattern]
        if not matches:
            raise CLIError(f"no input matches {pattern!r}")
        for match in map(Path, matches):
            if match.is_dir():
                found.update(dict.fromkeys(sorted(p for p in match.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)))
            elif match.exists():
                found[match] = None
            else:
                raise CLIError(f"input {str(match)!r} does not exist")
    return list(found)


def parse_hint(text: str) -> tuple:
    """``x,y,#rrggbb`` or ``x,y,#rrggbb,radius``."""
    parts = text.split(",")
    if len(parts) not in (3, 4):
        raise argparse.ArgumentTypeError(f"hint {text!r} is not x,y,#rrggbb[,radius]")
    try:
        numbers = [float(parts[0]), float(parts[1])] + ([float(parts[3])] if len(parts) == 4 else [])
    except ValueError:
        raise argparse.ArgumentTypeError(f"hint {text!r}: x, y and radius must be numbers") from None
    return (numbers[0], numbers[1], parts[2], *numbers[2:])


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


def unit_fraction(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text}")
    return value


def load_hints_file(path: str) -> dict:
    """A JSON object mapping an input's file name (or path) to its list of ``[x, y, colour(, radius)]``."""
    try:
        with open(path) as f:
            hints = json.load(f)
    except (OSError, json.JSONDecodeError) as error:
        raise CLIError(f"cannot read hints file {path!r}: {error}") from None
    if not isinstance(hints, dict):
        raise CLIError(f"hints file {path!r} must hold a JSON object mapping file names to hint lists")
    return hints


def save_atomically(image: PIL.Image.Image, path: Path) -> None:
    """No half-written image is ever seen, even if the run is killed while saving."""
    with atomic_write(path) as f:
        image.save(f, format="PNG")


def load_pipeline(model: str | None, device: str, dtype: torch.dtype):
    """The named model, or edn-tiny when ``model`` is None."""
    from .pipeline_edn import EDNPipeline

    try:
        pipe = EDNPipeline.from_pretrained(model, dtype=dtype)
    except (OSError, ValueError) as error:
        raise CLIError(f"cannot load model {model!r}: {str(error).splitlines()[0]}") from None
    return pipe.to(device)


def read_image(path: Path) -> PIL.Image.Image:
    """The decoded image, so that an unreadable file fails here, by name, and not inside a batch."""
    with PIL.Image.open(path) as image:
        image.load()
        return image.copy()


def batches_by_working_size(pipe, items: list, batch_size: int):
    """Consecutive runs of images that share a working size (one pipeline call each), at most batch_size long."""
    batch, size = [], None
    for item in items:
        item_size = pipe.working_size(*item[1].size)
        if batch and (item_size != size or len(batch) == batch_size):
            yield batch
            batch = []
        batch.append(item)
        size = item_size
    if batch:
        yield batch


def colorize(args: argparse.Namespace) -> int:
    from accelerate import PartialState

    # One process, or one of several under `accelerate launch` / torchrun (on CPUs too, gloo backend).
    state = PartialState(cpu=(args.device or "").startswith("cpu") or not torch.cuda.is_available())
    inputs = find_inputs(args.inputs)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    per_image_hints = load_hints_file(args.hints) if args.hints else {}
    todo = [p for p in inputs if args.overwrite or not (out_dir / f"{p.stem}.png").exists()]
    if len(todo) < len(inputs) and state.is_main_process:
        print(f"skipping {len(inputs) - len(todo)} already colourised (use --overwrite to redo)", file=sys.stderr)
    if not todo:
        return 0

    device = args.device or str(state.device)
    pipe = load_pipeline(args.model, device, DTYPES[args.dtype])
    pipe.set_progress_bar_config(disable=True)
    failed = []

    def fail(path: Path, error: Exception) -> None:
        failed.append(path)
        tqdm.write(f"edn: skipped {path}: {error}", file=sys.stderr)

    def run(batch: list) -> None:
        """One pipeline call for the batch; every image gets the generator it would get alone."""
        images = pipe(
            [image for _, image in batch],
            prompt=args.prompt,
            hints=[per_image_hints.get(path.name, per_image_hints.get(str(path), args.hint or None)) for path, _ in batch],
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            strength=args.strength,
            generator=[torch.Generator().manual_seed(args.seed) for _ in batch],
        ).images
        for (path, _), result in zip(batch, images):
            save_atomically(result, out_dir / f"{path.stem}.png")

    with state.split_between_processes(todo) as mine:
        progress = tqdm(total=len(mine), desc=f"colorizing [{state.process_index}]", unit="image",
                        disable=not state.is_local_main_process)
        readable = []
        for path in mine:
            try:
                readable.append((path, read_image(path)))
            except OSError as error:
                fail(path, error)
                progress.update(1)
        for batch in batches_by_working_size(pipe, readable, args.batch_size):
            try:
                run(batch)
            except EDNInputError:  # find which input it was: one call each
                for item in batch:
                    try:
                        run([item])
                    except EDNInputError as error:
                        fail(item[0], error)
            progress.update(len(batch))
        progress.close()
    if state.num_processes > 1:
        print(f"edn: process {state.process_index} colourised {len(mine) - len(failed)} of {len(mine)} inputs", file=sys.stderr)
    if failed:
        print(f"edn: {len(failed)} of {len(mine)} inputs failed", file=sys.stderr)
        return 1
    return 0


def export_hub_command(args: argparse.Namespace) -> int:
    from .hub_export import export_hub

    if not Path(args.model_dir).exists() and "/" not in args.model_dir:
        raise CLIError(f"model {args.model_dir!r} is neither a folder nor a Hub id")
    try:
        out = export_hub(args.model_dir, args.out_dir)
    except (OSError, ValueError) as error:
        raise CLIError(f"cannot export {args.model_dir!r}: {str(error).splitlines()[0]}") from None
    print(f"wrote {out}: load it with DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edn", description="Colourise grayscale photos with EDN.")
    commands = parser.add_subparsers(dest="command", required=True)
    col = commands.add_parser("colorize", help="colourise files, folders or globs into --out")
    col.add_argument("inputs", nargs="+", help="image files, folders or glob patterns")
    col.add_argument("--out", required=True, help="output folder (PNG files named after the inputs)")
    col.add_argument("--model", default=None, help=MODEL_HELP)
    col.add_argument("--prompt", default=None, help="text describing the colours")
    col.add_argument("--hint", action="append", type=parse_hint, help="x,y,#rrggbb[,radius]; repeatable")
    col.add_argument("--hints", help="JSON file: {file name: [[x, y, colour(, radius)], ...]}")
    col.add_argument("--steps", type=positive_int, default=50)
    col.add_argument("--guidance", type=non_negative_float, default=5.0)
    col.add_argument(
        "--strength", type=unit_fraction, default=None, help="share of the noise schedule run (default: the model's)"
    )
    col.add_argument("--seed", type=int, default=0)
    col.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: this process's accelerator)")
    col.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    col.add_argument("--batch-size", type=positive_int, default=1, help="images per pipeline call")
    col.add_argument("--overwrite", action="store_true", help="redo inputs whose output exists")
    col.set_defaults(run=colorize)
    add_evaluate_parser(commands)
    add_demo_parser(commands)
    export = commands.add_parser("export-hub", help="write a Hub repo folder that plain diffusers loads")
    export.add_argument("model_dir", help="an EDN pipeline folder or Hub id")
    export.add_argument("out_dir", help="the repo folder to write (upload it with `hf upload`)")
    export.set_defaults(run=export_hub_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.run(args)
    except (CLIError, EDNInputError) as error:
        print(f"edn: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
