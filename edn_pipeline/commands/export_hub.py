"""``edn export-hub``: write an EDN model as a Hub repo folder that plain diffusers loads (trust_remote_code)."""

import argparse
from pathlib import Path

from ..errors import one_line
from .common import CLIError


def add_export_hub_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``edn export-hub`` to the ``edn`` command's subparsers."""
    export = subparsers.add_parser("export-hub", help="write a Hub repo folder that plain diffusers loads")
    export.add_argument("model_dir", help="an EDN pipeline folder or Hub id")
    export.add_argument("out_dir", help="the repo folder to write: new, empty or an earlier export (replaced)")
    export.set_defaults(run=export_hub_command)
    return export


def export_hub_command(args: argparse.Namespace) -> int:
    from ..training.hub_export import export_hub

    if not Path(args.model_dir).exists() and "/" not in args.model_dir:
        raise CLIError(f"model {args.model_dir!r} is neither a folder nor a Hub id")
    try:
        out = export_hub(args.model_dir, args.out_dir)
    except (OSError, ValueError) as error:
        raise CLIError(f"cannot export {args.model_dir!r}: {one_line(error)}") from None
    print(f"wrote {out}: load it with DiffusionPipeline.from_pretrained({str(out)!r}, trust_remote_code=True)")
    return 0
