"""editforge train METHOD ...: run a training script in this process (flags as the script's)."""

from __future__ import annotations

import argparse

HELP = ("Train a model: `editforge train METHOD --help` (reward-pix2pix, dpo, sd3-pix2pix, text-to-image) lists the"
        " flags (same as the script's).")

# method -> the training script's module (each has main(argv))
METHODS = {"reward-pix2pix": "editforge.training.train_reward_pix2pix", "dpo": "editforge.training.train_diffusion_dpo",
           "sd3-pix2pix": "editforge.training.train_sd3_pix2pix", "text-to-image": "editforge.training.train_text_to_image"}


def add_arguments(parser) -> None:
    parser.add_argument("method", choices=sorted(METHODS), help="which training script")
    parser.add_argument("script_args", nargs=argparse.REMAINDER, help="the script's flags")


def run(args) -> int:
    import importlib

    module = importlib.import_module(METHODS[args.method])
    module.main(args.script_args)
    return 0
