"""The ``edn`` command line: ``edn colorize``, ``edn evaluate``, ``edn demo`` and ``edn export-hub``.

Each command is a module of this folder that adds its parser; what they share is in :mod:`.common`. torch,
diffusers and transformers are imported inside the commands, when one runs, so that ``edn --help`` and every usage
error answer at once. Every problem is one line on stderr: exit status 2 for a bad command line (checked before
any work starts), 1 when some inputs of a batch failed (each named; the others are done).
"""

import argparse
import sys

from ..errors import EDNInputError, one_line
from .colorize import add_colorize_parser
from .common import CLIError
from .demo import add_demo_parser
from .evaluate import add_evaluate_parser
from .export_hub import add_export_hub_parser


class OneLineParser(argparse.ArgumentParser):
    """Usage errors in one line like every other error of edn; the usage itself is one ``--help`` away."""

    def error(self, message: str):
        self.exit(2, f"edn: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="edn", description="Colourise grayscale photos with EDN.")
    commands = parser.add_subparsers(dest="command", required=True)
    for add_parser in (add_colorize_parser, add_evaluate_parser, add_demo_parser, add_export_hub_parser):
        add_parser(commands)
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
