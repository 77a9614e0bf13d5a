"""editforge.evaluation: ``editforge eval``, one evaluation harness for editing models (suites,
generation, judging, scores and reports).

    from editforge.evaluation import evaluate

    results = evaluate(["baseline=out/baseline", "reward=out/reward"], "synthetic", "eval_out",
                       seeds=[0, 1], model_args={"reward": {"rewards": [5, 5, 5]}})
    results.figure("reward", "following_accuracy")

Modules: ``suites`` (the items and how a benchmark groups them), ``models`` (model specs, call
arguments, loading), ``judging`` (the judge thread over the annotation engine), ``scoring``
(figures and bootstrap intervals), ``harness`` (the resumable run), ``report`` (report.md, grid.png).
Importing this package imports neither torch nor diffusers.
"""

from .harness import EvalResults, evaluate, item_seed
from .models import ModelSpec, model_specs, parse_call_args, parse_model_args
from .suites import SUITES, Suite, SuiteItem, load_suite

__all__ = [
           "SUITES",
           "EvalResults",
           "ModelSpec",
           "Suite",
           "SuiteItem",
           "evaluate",
           "item_seed",
           "load_suite",
           "model_specs",
           "parse_call_args",
           "parse_model_args",
]
