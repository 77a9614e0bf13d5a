"""editforge generate-pairs: InstructEngine's preference pairs from a prompt-pair dataset.

The engine is :func:`editforge.dataset_builders.prompts.pairs.generate_pairs`; dataset_builders
may not import the evaluation harness, so this module hands it the harness's generation loop
(:class:`PipelineImages`) and judge thread (:class:`ThreadJudge`) as the objects it takes.
"""

from __future__ import annotations

import contextlib
import sys

from .arguments import add_judge_arguments, add_max_shard_size, image_size, non_negative_int, positive_int

HELP = ("Make an image for each prompt of every contrasting prompt pair with any diffusers text-to-image pipeline, "
        "judge each against both prompts, keep the pairs InstructEngine's rules pass, as a preference-pair dataset.")


def add_arguments(parser) -> None:
    parser.add_argument("prompts", metavar="PROMPTS", help="prompt-pair dataset folder (editforge generate-prompts)")
    parser.add_argument("out", metavar="OUT", help="output dataset folder (load_dataset(OUT) reads it); the same "
                                                   "command again resumes there")
    parser.add_argument("--model", required=True, metavar="T2I",
                        help="text-to-image pipeline folder or Hub id, or outputs:PATH (images made elsewhere: "
                             "PATH/<pair_id>-base.png and PATH/<pair_id>-contrast.png)")
    parser.add_argument("--model-args", action="append", default=[], metavar="KEY=VALUE,...",
                        help="call arguments of the pipeline, e.g. steps=30,guidance_scale=7.5; repeatable")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="run seed; each image's generator is seeded from it and the image's id (default 0)")
    parser.add_argument("--size", type=image_size, default=None, metavar="WxH",
                        help="image size asked of the pipeline (default: the pipeline's own)")
    parser.add_argument("--batch-size", type=positive_int, default=8, metavar="N", help="images per pipeline call (default 8)")
    add_judge_arguments(parser, model_flag="--judge-model",
                        default_judge="the default without --base-url or --judge-model; it reads only the synthetic "
                                      "world's prompts",
                        cache_default="OUT/.editforge-staging-default-train/answers.sqlite")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the code a Hub model ships")
    parser.add_argument("--device", default=None, help="torch device of the pipeline (default: where it loads)")
    add_max_shard_size(parser)
    parser.add_argument("--allow-missing", action="store_true",
                        help="exit 0 even when some pairs are missing an answer (they are left out either way)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")


class PipelineImages:
    """A diffusers text-to-image pipeline (or ``outputs:PATH``) as the pair engine's image maker:
    the evaluation harness's generation loop (batched, one generator per image seeded by
    ``item_seed(seed, image id)``, each image written atomically)."""

    def __init__(self, spec, *, seed: int = 0, size: tuple[int, int] | None = None, batch_size: int = 8,
                 device: str | None = None, torch_dtype=None, progress: bool = True):
        from editforge.errors import UsageError
        from editforge.evaluation.models import check_location, outputs_folder

        check_location(spec)
        self.elsewhere = outputs_folder(spec) is not None  # outputs:PATH, images made elsewhere: no seeds
        if size is not None and {"height", "width"} & set(spec.call_args):
            raise UsageError("give the image size once: --size or height/width in --model-args")
        self.spec, self.run_seed, self.size, self.batch_size = spec, seed, size, batch_size
        self.device, self.torch_dtype, self.progress = device, torch_dtype, progress

    def settings(self) -> dict:
        return {"model": self.spec.location, "call_args": self.spec.signature()["call_args"],
                "seed": None if self.elsewhere else self.run_seed, "size": list(self.size) if self.size else None}

    def path(self, folder, image_id: str):
        from editforge.evaluation.harness import image_path

        return image_path(folder, self.spec.name, self.run_seed, image_id)

    def seed(self, image_id: str) -> int | None:
        from editforge.evaluation.harness import item_seed

        return None if self.elsewhere else item_seed(self.run_seed, image_id)

    def make(self, folder, images, done, bar) -> None:
        from types import SimpleNamespace

        from editforge.evaluation.harness import generate_images
        from editforge.evaluation.suites import TEXT_TO_IMAGE, SuiteItem

        width, height = self.size or (None, None)
        pending = [(SuiteItem(image_id, prompt, None, width=width, height=height), self.run_seed)
                   for image_id, prompt in images]
        generate_images([self.spec], {self.spec.name: pending}, folder, self.batch_size, self.progress, self.device,
                        self.torch_dtype, SimpleNamespace(generate=bar), TEXT_TO_IMAGE,  # the loop advances bars.generate
                        submit=lambda rows: done([row["item"] for row in rows]))


class ThreadJudge:
    """The evaluation harness's judge thread (the annotation engine, its retries and answer cache)
    as the pair engine's judge, with the ``t2i-alignment`` rubric: the synthetic world's oracle on
    a loopback server (``judge="oracle"``) or an OpenAI-compatible endpoint."""

    def __init__(self, *, judge: str | None = None, base_url: str | None = None, model: str | None = None,
                 cache=None, concurrency: int = 8, policy=None):
        from editforge.evaluation.judging import ORACLE, JudgeConfig
        from editforge.vocabulary import T2I_ALIGNMENT

        if judge is None and base_url is None and model is None:
            judge = ORACLE
        self.config = JudgeConfig(T2I_ALIGNMENT, judge, base_url, model, cache, concurrency, policy=policy)
        self.config.check()
        self.oracle = judge == ORACLE
        self.endpoint = None if self.oracle else self.config.endpoint()  # no key and no URL: refused now

    def settings(self) -> dict:
        return {"model": self.config.model_name(), "rubric": self.config.rubric, "oracle": self.oracle,
                "endpoint": "the built-in oracle (loopback)" if self.oracle else "an OpenAI-compatible endpoint"}

    @contextlib.contextmanager
    def session(self, folder, on_answer):
        import dataclasses

        from editforge.dataset_builders.annotation.server import serve_oracle
        from editforge.dataset_builders.prompts.pairs import ANSWER_CACHE
        from editforge.evaluation.judging import LOOPBACK_KEY, JudgeWorker

        config = self.config if self.config.cache is not None else dataclasses.replace(self.config,
                                                                                        cache=folder / ANSWER_CACHE)
        with contextlib.ExitStack() as stack:
            base_url, api_key = (stack.enter_context(serve_oracle()), LOOPBACK_KEY) if self.oracle else self.endpoint
            worker = JudgeWorker(config, base_url, api_key, on_answer).start()
            try:
                yield lambda rows: worker.submit(rows, {})
            except BaseException:
                worker.queue.put(None)  # stop the thread; answers already in are cached
                raise
            worker.close()


def run(args) -> int:
    from editforge.dataset_builders.prompts.generation import REPORT_NAME
    from editforge.dataset_builders.prompts.pairs import generate_pairs
    from editforge.evaluation.models import model_specs

    spec = model_specs([args.model], args.model_args)[0]
    spec.trust_remote_code = args.trust_remote_code or None
    images = PipelineImages(spec, seed=args.seed, size=args.size, batch_size=args.batch_size, device=args.device,
                            progress=not args.no_progress)
    judge = ThreadJudge(judge=args.judge, base_url=args.base_url, model=args.judge_model, cache=args.cache,
                        concurrency=args.concurrency)
    report = generate_pairs(args.prompts, args.out, images, judge, max_shard_size=args.max_shard_size,
                            progress=not args.no_progress)
    print(report.summary())
    if report.missing and not args.allow_missing:
        print(f"editforge generate-pairs: {report.missing} of {report.pairs} pairs are missing an answer (listed with "
              f"their errors in {args.out}/{REPORT_NAME}); run the same command again to ask for them, or pass "
              f"--allow-missing", file=sys.stderr)
        return 1
    if not report.kept:
        print(f"editforge generate-pairs: no pair passed the rules, no dataset was written (scores in "
              f"{args.out}/{REPORT_NAME})", file=sys.stderr)
        return 1
    return 0
