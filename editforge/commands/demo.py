"""editforge demo: the main job, a miniature Multi-Reward reproduction, offline."""

from __future__ import annotations

HELP = ("Run the main job offline: synthetic data -> oracle judge via the openai client -> dataset -> "
        "baseline and reward-conditioned InstructPix2Pix -> judged edits -> report (8 to 12 min on 2 cores).")


def add_arguments(parser) -> None:
    from editforge.demo import DemoConfig
    from editforge.training.config import add_dataclass_arguments

    add_dataclass_arguments(parser, DemoConfig)


def run(args) -> int:
    from editforge.demo import DemoConfig, run_demo

    config = DemoConfig(**{k: v for k, v in vars(args).items() if k in DemoConfig.__dataclass_fields__})
    run_demo(config)
    return 0
