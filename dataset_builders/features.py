"""The canonical ``datasets.Features`` every editforge dataset is written in.

Edit triplets (:data:`EDIT_FEATURES`)::

    id               string   unique within the dataset
    source_image     Image    RGB
    edited_image     Image    RGB, same size as the source
    mask_image       Image    8-bit grey (L), white = region to edit; null when the source has none
    instruction      string
    source_caption   string   null when absent
    target_caption   string   null when absent
    task             string   null when absent
    width, height    int32    of the source (and edited) image
    provenance       {dataset: string, original_id: string}
    rewards          {instruction_following | detail_preserving | generation_quality:
                        {score: float32 (0..5), feedback: string}}       null when absent
    metrics          {clip_sim_source, clip_sim_target, clip_sim_dir, clip_sim_image,
                      dinov2_sim, ssim: float32}          null when absent (and per field)
    viescore         {sc, pq, o: float32 (0..10), sc_scores, pq_scores: list of float32,
                      sc_reasoning, pq_reasoning: string}                 null when absent

Preference pairs (:data:`PAIR_FEATURES`)::

    id, prompt: string; image_0, image_1: Image (RGB); label_0: float32 (1 = image_0 preferred,
    0 = image_1 preferred, 0.5 = tie); theme, subtopic, contrast: string (null when absent);
    pair_id: string, the contrasting pair a row belongs to (InstructEngine's cross-validation:
    two rows with the same images, one per prompt, each preferring the image made for its own
    prompt; null when absent); provenance as above.
"""

from __future__ import annotations

from datasets import Features, Image, List, Value

from editforge.vocabulary import METRIC_NAMES, PERSPECTIVES

PAIR_LABELS = (0.0, 0.5, 1.0)

PROVENANCE = {"dataset": Value("string"), "original_id": Value("string")}
REWARDS = {p: {"score": Value("float32"), "feedback": Value("string")} for p in PERSPECTIVES}
METRICS = {name: Value("float32") for name in METRIC_NAMES}
VIESCORE = {
    "sc": Value("float32"),
    "pq": Value("float32"),
    "o": Value("float32"),
    "sc_scores": List(Value("float32")),
    "pq_scores": List(Value("float32")),
    "sc_reasoning": Value("string"),
    "pq_reasoning": Value("string"),
}

EDIT_FEATURES = Features(
    {
        "id": Value("string"),
        "source_image": Image(),
        "edited_image": Image(),
        "mask_image": Image(),
        "instruction": Value("string"),
        "source_caption": Value("string"),
        "target_caption": Value("string"),
        "task": Value("string"),
        "width": Value("int32"),
        "height": Value("int32"),
        "provenance": PROVENANCE,
        "rewards": REWARDS,
        "metrics": METRICS,
        "viescore": VIESCORE,
    }
)

PAIR_FEATURES = Features(
    {
        "id": Value("string"),
        "prompt": Value("string"),
        "image_0": Image(),
        "image_1": Image(),
        "label_0": Value("float32"),
        "theme": Value("string"),
        "subtopic": Value("string"),
        "contrast": Value("string"),
        "pair_id": Value("string"),
        "provenance": PROVENANCE,
    }
)
