"""LVLM judge and annotation engine: Multi-Reward and VIEScore rewards for edit triplets through
any OpenAI-compatible endpoint, at scale (bounded concurrency, retries, a resumable cache, the
Batch API), plus a loopback server that serves the synthetic world's oracle as a judge.

    from editforge.dataset_builders.annotation import annotate_manifest, serve_oracle

    report = annotate_manifest("synth_world", "rewards.jsonl", judge="oracle")
    print(report.summary())

Modules: ``rubrics`` (prompts, schemas, validation), ``images`` (downscaling, data URLs),
``client`` (the one async judge client), ``cache`` (SQLite answer cache), ``batch`` (Batch
API), ``sources`` (manifests), ``engine`` (the run), ``jobs`` (ready-made text requests answered once,
for other jobs such as the prompt generator), ``server`` (loopback OpenAI-compatible server on
aiohttp, serving any responder), ``responders`` (the responder interface and the built-in judges).
"""

from .batch import BatchError, BatchRunner
from .cache import AnswerCache, cache_key, default_cache_path
from .client import JudgeClient, JudgeOutcome, JudgeUnavailable, RetryPolicy, Usage
from .engine import AnnotationReport, Annotator, MissingRewards, Pricing, annotate_manifest, annotate_source
from .images import ImageError, PreparedImage, prepare_image
from .jobs import JobAnswers, ask_all
from .rubrics import MULTI_REWARD, RUBRICS, VIESCORE_EDIT, InvalidAnswer, Rubric, get_rubric
from .sources import TripletSource, manifest_source, open_source

# The loopback server is imported on first use, so that ``python -m
# editforge.dataset_builders.annotation.server`` does not find it imported already.
_SERVER_NAMES = ("ChatRequest", "ConstantResponder", "FaultPlan", "JudgeResponder", "LoopbackServer", "OracleResponder",
                 "ResponderError", "serve", "serve_oracle")


def __getattr__(name):
    if name in _SERVER_NAMES:
        from . import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "BatchError", "BatchRunner",
    "AnswerCache", "cache_key", "default_cache_path",
    "JudgeClient", "JudgeOutcome", "JudgeUnavailable", "RetryPolicy", "Usage",
    "AnnotationReport", "Annotator", "MissingRewards", "Pricing", "annotate_manifest", "annotate_source",
    "ImageError", "PreparedImage", "prepare_image",
    "JobAnswers", "ask_all",
    "MULTI_REWARD", "RUBRICS", "VIESCORE_EDIT", "InvalidAnswer", "Rubric", "get_rubric",
    "ChatRequest", "ConstantResponder", "FaultPlan", "JudgeResponder", "LoopbackServer", "OracleResponder",
    "ResponderError", "serve", "serve_oracle",
    "TripletSource", "manifest_source", "open_source",
]
