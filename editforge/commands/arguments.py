"""Argument types shared by the subcommands: each rejects bad values with one clear message."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from editforge.errors import UsageError


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return value


def positive_int(text: str) -> int:
    value = non_negative_int(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be 1 or more, got 0")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:  # also rejects nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_float(text: str) -> float:
    value = non_negative_float(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be more than 0, got 0")
    return value


def unit_interval(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {value:g}")
    return value


def image_size(text: str) -> tuple[int, int]:
    """'WxH' (or a single number for a square) -> (width, height)."""
    parts = text.lower().split("x")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT such as 128x96, got {text!r}") from None
    if len(numbers) == 1:
        numbers *= 2
    if len(numbers) != 2 or min(numbers) < 16 or max(numbers) > 4096:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT with sides from 16 to 4096, got {text!r}")
    return numbers[0], numbers[1]


def writable_dir(path: str | os.PathLike) -> Path:
    """Create ``path`` if needed and check that files can be written in it."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} exists and is not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".editforge-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise UsageError(f"cannot write to {path}: {err.strerror or err}") from None
    return path


_SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def file_size(text: str) -> int:
    """'500MB', '1GiB', '64KB' or a number of bytes -> bytes (the units ``datasets`` accepts)."""
    import re

    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = match and match.group(2).upper()
    if not match or unit not in _SIZE_UNITS:
        raise argparse.ArgumentTypeError(f"expected a size such as 500MB, 1GiB or 1048576, got {text!r}")
    size = int(float(match.group(1)) * _SIZE_UNITS[unit])
    if size <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 bytes, got {text!r}")
    return size


DEFAULT_MAX_SHARD_SIZE = "500MB"


def add_max_shard_size(parser) -> None:
    """``--max-shard-size SIZE``, the one flag of every command that writes a dataset folder."""
    parser.add_argument("--max-shard-size", type=file_size, default=DEFAULT_MAX_SHARD_SIZE, metavar="SIZE",
                        help=f"start a new Parquet shard past this many (uncompressed) bytes (default {DEFAULT_MAX_SHARD_SIZE})")


def add_llm_arguments(parser, *, unit: str, base_url_help: str, model_help: str) -> None:
    """The flags of a command that asks an OpenAI-compatible endpoint through the project's client
    (``unit``: what one request is for, such as "item"; the key always comes from OPENAI_API_KEY only)."""
    parser.add_argument("--base-url", default=None, metavar="URL", help=base_url_help)
    parser.add_argument("--model", default=None, metavar="M", help=model_help)
    parser.add_argument("--concurrency", type=positive_int, default=16, metavar="N", help="requests in flight at once (default 16)")
    parser.add_argument("--batch", action="store_true", help="use the OpenAI Batch API (half the price, results within 24 h)")
    parser.add_argument("--cache", default=None, metavar="PATH",
                        help="answer cache, SQLite (default ~/.cache/editforge/annotations.sqlite); makes runs resumable")
    parser.add_argument("--timeout", type=positive_float, default=120.0, metavar="S", help="seconds per request (default 120)")
    parser.add_argument("--max-attempts", type=positive_int, default=6, metavar="K",
                        help=f"failed requests (429, 5xx, timeouts) per {unit} before it is recorded as missing (default 6)")
    parser.add_argument("--max-invalid", type=positive_int, default=3, metavar="K",
                        help=f"invalid answers per {unit} before it is recorded as missing (default 3)")
    parser.add_argument("--price-in", type=non_negative_float, default=2.50, metavar="USD",
                        help="price per million input tokens (default 2.50, gpt-4o; the Batch API costs half)")
    parser.add_argument("--price-out", type=non_negative_float, default=10.00, metavar="USD",
                        help="price per million output tokens (default 10.00, gpt-4o)")
    parser.add_argument("--poll-interval", type=positive_float, default=30.0, metavar="S", help="seconds between Batch API polls (default 30)")
    parser.add_argument("--allow-missing", action="store_true", help=f"exit 0 even when some {unit}s got no valid answer")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def llm_options(args) -> dict:
    """The keyword arguments of the flags of :func:`add_llm_arguments` that the library takes as
    objects: ``pricing`` and ``policy``."""
    from editforge.dataset_builders.annotation import Pricing, RetryPolicy

    return {"pricing": Pricing(args.price_in, args.price_out),
            "policy": RetryPolicy(max_attempts=args.max_attempts, max_invalid_answers=args.max_invalid, timeout=args.timeout)}


def add_judge_arguments(parser, *, model_flag: str = "--model", default_judge: str, cache_default: str) -> None:
    """The flags that choose the judge of a command that judges images through the annotation
    engine: ``--judge oracle``, ``--base-url``, the judge model (``model_flag``: ``--model``, or
    another name where ``--model`` is the model being run), ``--concurrency`` and ``--cache``."""
    parser.add_argument("--judge", choices=("oracle",), default=None,
                        help=f"oracle: the synthetic world's built-in judge on a loopback server ({default_judge})")
    parser.add_argument("--base-url", default=None, metavar="URL",
                        help="OpenAI-compatible judge endpoint (default OPENAI_BASE_URL; key from OPENAI_API_KEY)")
    parser.add_argument(model_flag, default=None, metavar="M", help="judge model (default gpt-4o)")
    parser.add_argument("--concurrency", type=positive_int, default=8, metavar="N", help="judge requests in flight (default 8)")
    parser.add_argument("--cache", default=None, metavar="PATH", help=f"judge answer cache (default {cache_default})")
