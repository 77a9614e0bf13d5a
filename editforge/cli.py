"""The ``editforge`` command line.

Each subcommand lives in its own module under ``editforge/commands/`` and exposes ``HELP``
(one line), ``add_arguments(parser)`` and ``run(args) -> int``. Those modules import only the
standard library at import time, so ``editforge --help`` answers without loading torch or
diffusers; the heavy imports happen inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import EditforgeError

# (name, module) in the order `editforge --help` lists them.
COMMANDS = [
    ("demo", "editforge.commands.demo"),
    ("synth", "editforge.commands.synth"),
    ("annotate", "editforge.commands.annotate"),
    ("build-dataset", "editforge.commands.build_dataset"),
    ("publish-pipeline", "editforge.commands.publish_pipeline"),
    ("train", "editforge.commands.train"),
]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line, with a pointer to --help."""

    def error(self, message):  # noqa: D102 - argparse API
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="editforge",
        description="Instruction-based image editing and text-to-image alignment on the Hugging Face stack.",
    )
    parser.add_argument("--version", action="version", version=f"editforge {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in COMMANDS:
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args._module.run(args) or 0)
    except EditforgeError as err:
        print(f"editforge {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"editforge {args.command}: interrupted; finished work is kept, run the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
