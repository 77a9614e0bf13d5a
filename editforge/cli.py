"""The ``editforge`` command line.

Each subcommand lives in its own module under ``editforge/commands/`` and exposes ``HELP``
(one line), ``add_arguments(parser)`` and ``run(args) -> int``. Those modules import only the
standard library at import time, so ``editforge --help`` answers without loading torch or
diffusers; the heavy imports happen inside ``run``.

Library messages editforge knows to be harmless (``editforge/quiet.py``) are hidden before a
command runs; ``--verbose`` (before or after the command's name) or ``EDITFORGE_VERBOSE=1`` shows
them, in this process and in the processes it starts.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .errors import EditforgeError
from .quiet import ENV as VERBOSE_ENV
from .quiet import is_verbose, quiet_libraries

VERBOSE_HELP = (f"show every library warning and progress bar (editforge hides the ones it knows are harmless; "
                f"also {VERBOSE_ENV}=1)")

# (name, module) in the order `editforge --help` lists them.
COMMANDS = [
    ("demo", "editforge.commands.demo"),
    ("synth", "editforge.commands.synth"),
    ("annotate", "editforge.commands.annotate"),
    ("generate-prompts", "editforge.commands.generate_prompts"),
    ("generate-pairs", "editforge.commands.generate_pairs"),
    ("build-dataset", "editforge.commands.build_dataset"),
    ("metrics", "editforge.commands.metrics"),
    ("filter", "editforge.commands.filter"),
    ("publish-pipeline", "editforge.commands.publish_pipeline"),
    ("train", "editforge.commands.train"),
    ("eval", "editforge.commands.eval"),
    ("app", "editforge.commands.app"),
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
    parser.add_argument("--verbose", action="store_true", default=False, help=VERBOSE_HELP)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, module_name in COMMANDS:
        module = importlib.import_module(module_name)
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        # also after the command's name; SUPPRESS keeps a global --verbose when this one is absent
        sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
        sub.set_defaults(_module=module)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    quiet_libraries(verbose=args.verbose or is_verbose())
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
