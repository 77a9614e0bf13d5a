"""editforge generate-prompts: InstructEngine's base prompts and contrasting variants from an LLM."""

from __future__ import annotations

import sys

from editforge.vocabulary import CONTRAST_AXES

from .arguments import add_llm_arguments, llm_options, non_negative_int, positive_int, unit_interval, writable_dir

HELP = ("Write base prompts per subtopic of a taxonomy and a contrasting variant per axis (InstructEngine) with any "
        "OpenAI-compatible LLM, as a dataset folder.")


def add_arguments(parser) -> None:
    parser.add_argument("taxonomy", metavar="TAXONOMY",
                        help="a built-in taxonomy (instructengine: 20 themes x 20 subtopics; synthetic: the synthetic "
                             "world's vocabulary) or a taxonomy JSON file")
    parser.add_argument("out", metavar="OUT", help="output dataset folder (load_dataset(OUT) reads it)")
    parser.add_argument("--per-subtopic", type=positive_int, default=5, metavar="N",
                        help="base prompts per subtopic (default 5; InstructEngine's 25K pairs from 400 subtopics "
                             "are about 21 base prompts per subtopic on 3 axes)")
    parser.add_argument("--axes", nargs="+", choices=CONTRAST_AXES, default=None, metavar="AXIS",
                        help=f"contrast axes to write a variant for: some of {', '.join(CONTRAST_AXES)} "
                             f"(default: the taxonomy's)")
    parser.add_argument("--seed", type=non_negative_int, default=0,
                        help="seed sent with every request (the built-in writer is deterministic for it; default 0)")
    parser.add_argument("--dedupe-threshold", type=unit_interval, default=0.9, metavar="T",
                        help="a base prompt whose word-trigram Jaccard similarity to an earlier one is at least T is "
                             "removed as a near-duplicate (default 0.9)")
    add_llm_arguments(
        parser, unit="subtopic",
        base_url_help="OpenAI-compatible endpoint (https://api.openai.com/v1, vLLM, Ollama...); the key comes from "
                      "OPENAI_API_KEY only. Without it, the built-in synthetic-world writer answers through a loopback "
                      "server (no key, no network)",
        model_help="LLM (default gpt-4o; with the built-in writer, its own name)",
    )


def run(args) -> int:
    from editforge.dataset_builders.prompts import generate_prompts, load_taxonomy
    from editforge.dataset_builders.prompts.generation import REPORT_NAME

    taxonomy = load_taxonomy(args.taxonomy)  # a bad taxonomy is reported before anything is started
    out = writable_dir(args.out)
    report = generate_prompts(
        taxonomy, out, per_subtopic=args.per_subtopic, axes=args.axes, base_url=args.base_url, model=args.model,
        concurrency=args.concurrency, cache=args.cache, batch=args.batch, seed=args.seed,
        threshold=args.dedupe_threshold, poll_interval=args.poll_interval, allow_missing=True,
        progress=not args.no_progress, **llm_options(args),
    )
    print(report.summary())
    if report.missing_subtopics and not args.allow_missing:
        print(f"editforge generate-prompts: {report.missing_subtopics} of {report.subtopics} subtopics have no valid "
              f"answer (listed with their errors in {out / REPORT_NAME}); run the same command again to retry "
              f"them, or pass --allow-missing"
              + ("; the built-in writer knows only the synthetic world's vocabulary (use the synthetic taxonomy, or "
                 "--base-url for a real LLM)" if args.base_url is None else ""), file=sys.stderr)
        return 1
    return 0
