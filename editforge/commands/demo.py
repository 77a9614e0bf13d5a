"""editforge demo: the main job, a miniature Multi-Reward reproduction, offline; ``editforge demo
VARIANT`` runs another miniature instead (``editforge.demos``: ``region-masks``)."""

from __future__ import annotations

import argparse

HELP = ("Run the main job offline: synthetic data -> oracle judge via the openai client -> dataset -> "
        "baseline and reward-conditioned InstructPix2Pix -> judged edits -> report (8 to 12 min on 2 cores). "
        "`editforge demo region-masks --help`: UltraEdit's region masks in miniature.")


def add_arguments(parser) -> None:
    from editforge.demo import DemoConfig
    from editforge.demos import VARIANTS
    from editforge.training.config import add_dataclass_arguments

    add_dataclass_arguments(parser, DemoConfig)
    # optional: without a variant, `editforge demo [--flags]` is the main demo, as it always was
    variants = parser.add_subparsers(dest="variant", metavar="[VARIANT]", parser_class=type(parser),
                                     help="another miniature instead of the main demo (each has its own --flags): "
                                          + ", ".join(VARIANTS))
    for name, (module, config_class, _, text) in VARIANTS.items():
        sub = variants.add_parser(name, help=text, description=text)
        add_dataclass_arguments(sub, _config_class(module, config_class))
        # as the CLI adds to every command: --verbose after the variant's name too
        from editforge.cli import VERBOSE_HELP

        sub.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)


def _config_class(module: str, name: str):
    import importlib

    return getattr(importlib.import_module(module), name)


def run(args) -> int:
    import importlib

    from editforge.demos import VARIANTS

    variant = getattr(args, "variant", None)
    if variant is not None:
        module_name, config_class, function, _ = VARIANTS[variant]
        module = importlib.import_module(module_name)
        config_type = getattr(module, config_class)
        config = config_type(**{k: v for k, v in vars(args).items() if k in config_type.__dataclass_fields__})
        getattr(module, function)(config)
        return 0

    from editforge.demo import DemoConfig, run_demo

    config = DemoConfig(**{k: v for k, v in vars(args).items() if k in DemoConfig.__dataclass_fields__})
    run_demo(config)
    return 0
