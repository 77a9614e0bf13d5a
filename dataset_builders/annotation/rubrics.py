"""What the judge is asked and what a valid answer is: one prompt, one JSON schema and one
validation per rubric, with a version that goes into every cache key.

Three rubrics:

``multi-reward`` (Multi-Reward as Condition, RewardEdit20K)
    Three perspectives, each an integer score 0..5 and a short ``feedback`` naming the failure
    points ("None" when there is none)::

        {"instruction_following": {"score": 4, "feedback": "..."},
         "detail_preserving": {...}, "generation_quality": {...}}

``viescore-edit`` (VIEScore for image editing, as OmniEdit uses it)
    The judge answers four integer sub-scores 0..10 and two reasonings; the rewards derive
    ``sc = min(editing_success, over_editing)``, ``pq = min(naturalness, artifacts)`` and
    ``o = sqrt(sc * pq)``::

        {"sc": 8.0, "pq": 6.0, "o": 6.93, "sc_scores": [8, 10], "pq_scores": [6, 6],
         "sc_reasoning": "...", "pq_reasoning": "..."}

``t2i-alignment`` (text-to-image; InstructEngine's check of generated images)
    One image and its prompt: ``alignment``, an integer 0..5 (5: everything the prompt asks for
    is there, as asked) with feedback naming what is missing or wrong::

        {"alignment": {"score": 3, "feedback": "the circle is blue, not red"}}

The request carries the instruction (or prompt) on a line of its own (``Editing instruction:
"<JSON string>"``, ``Prompt: "<JSON string>"``) and the images in a fixed order, source first;
:func:`read_request` reads them back, which is how the loopback oracle judge knows what it is
judging. A rubric names the record fields its images come from (``image_fields``).

A rubric's answer is never repaired: anything that is not JSON, lacks a field, has an extra one
or holds a score out of range raises :class:`InvalidAnswer`; the client retries and, in the end,
records the item as missing.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Callable

from editforge.errors import UsageError

# The three perspectives of Multi-Reward and the feedback for "no failure": one definition,
# shared with the synthetic world's ground truth.
from editforge.vocabulary import ALIGNMENT, EDIT_IMAGE_COLUMNS, FEEDBACK_SEPARATOR, NO_FAILURE, PERSPECTIVES
from editforge.vocabulary import MULTI_REWARD as MULTI_REWARD_NAME
from editforge.vocabulary import T2I_ALIGNMENT as T2I_ALIGNMENT_NAME
from editforge.vocabulary import VIESCORE_EDIT as VIESCORE_EDIT_NAME

INSTRUCTION_LABEL = "Editing instruction: "
PROMPT_LABEL = "Prompt: "
SOURCE_LABEL = "Original image:"
EDITED_LABEL = "Edited image:"
GENERATED_LABEL = "Generated image:"
EDIT_IMAGES = ((EDIT_IMAGE_COLUMNS[0], SOURCE_LABEL), (EDIT_IMAGE_COLUMNS[1], EDITED_LABEL))


class InvalidAnswer(ValueError):
    """The judge's answer does not fit the rubric: not JSON, a wrong field or a score out of range."""


# --------------------------------------------------------------------------------------------
# A small JSON-schema validator for the subset the answer formats use (object, array of
# ``items``, string, integer with minimum/maximum, required, additionalProperties false). The
# same schema goes to the endpoint as the structured-output format, so what is asked and what is
# checked cannot drift apart.


def validate(value: Any, schema: dict, path: str = "answer") -> Any:
    """Check ``value`` against ``schema``; return it with integral floats (4.0) made ints.

    Raises InvalidAnswer naming the path and the problem.
    """
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            raise InvalidAnswer(f"{path}: expected an object, got {type(value).__name__}")
        properties = schema.get("properties", {})
        missing = [name for name in schema.get("required", ()) if name not in value]
        if missing:
            raise InvalidAnswer(f"{path}: missing {', '.join(missing)}")
        extra = [name for name in value if name not in properties]
        if extra and schema.get("additionalProperties") is False:
            raise InvalidAnswer(f"{path}: unexpected {', '.join(extra)}")
        return {name: validate(value[name], properties[name], f"{path}.{name}")
                for name in properties if name in value}
    if kind == "array":
        if not isinstance(value, list):
            raise InvalidAnswer(f"{path}: expected an array, got {type(value).__name__}")
        return [validate(item, schema["items"], f"{path}[{i}]") for i, item in enumerate(value)]
    if kind == "string":
        if not isinstance(value, str):
            raise InvalidAnswer(f"{path}: expected a string, got {type(value).__name__}")
        return value
    if kind == "integer":
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidAnswer(f"{path}: expected an integer, got {json.dumps(value)}")
        if "minimum" in schema and value < schema["minimum"]:
            raise InvalidAnswer(f"{path}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise InvalidAnswer(f"{path}: {value} is above the maximum {schema['maximum']}")
        return value
    raise ValueError(f"{path}: the rubric validator does not handle schema type {kind!r}")


def _object(properties: dict) -> dict:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def json_answer(content: str | None) -> Any:
    """The JSON value of an answer's text; InvalidAnswer when it is empty or not JSON."""
    if not isinstance(content, str) or not content.strip():
        raise InvalidAnswer("empty answer" if not content else f"expected the answer as text, got {type(content).__name__}")
    try:
        return json.loads(content)
    except json.JSONDecodeError as err:
        raise InvalidAnswer(f"answer is not JSON ({err.msg} at character {err.pos})") from None


def _score(low: int, high: int) -> dict:
    return {"type": "integer", "minimum": low, "maximum": high}


_TEXT = {"type": "string"}


@dataclass(frozen=True)
class Rubric:
    """A judging rubric: prompt, answer schema, validation and the rewards derived from an answer.

    ``version`` is part of every cache key: change it whenever the prompt or the schema changes,
    so answers to the old question are never served for the new one.
    """

    name: str
    version: str
    schema_name: str
    system_prompt: str
    task_prompt: str
    schema: dict
    to_rewards: Callable[[dict], dict]
    # Inverse mapping used by the loopback oracle: its judgement -> this rubric's answer.
    from_perspectives: Callable[[dict], dict] = field(repr=False)
    # (record field, label) of each image the judge is shown, in order; the label of the text.
    images: tuple[tuple[str, str], ...] = EDIT_IMAGES
    text_label: str = INSTRUCTION_LABEL

    @property
    def image_fields(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.images)

    @property
    def response_format(self) -> dict:
        """The structured-output ``response_format`` of a chat completion request."""
        return {"type": "json_schema", "json_schema": {"name": self.schema_name, "strict": True, "schema": self.schema}}

    def messages(self, instruction: str, *image_urls: str) -> list[dict]:
        """Chat messages asking for a judgement of one item: the instruction (or prompt), then each
        image (a data URL) after its label, in :attr:`images` order (an edit: source first)."""
        if len(image_urls) != len(self.images):
            raise ValueError(f"the {self.name} rubric shows {len(self.images)} image(s), got {len(image_urls)}")
        text = f"{self.task_prompt}\n\n{self.text_label}{json.dumps(instruction, ensure_ascii=False)}"
        content = [{"type": "text", "text": text}]
        for (_, label), url in zip(self.images, image_urls):
            content += [{"type": "text", "text": label}, {"type": "image_url", "image_url": {"url": url}}]
        return [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": content}]

    def parse(self, content: str | None) -> dict:
        """The rewards of an answer's text; InvalidAnswer when it is not a valid answer."""
        return self.to_rewards(validate(json_answer(content), self.schema))


# --------------------------------------------------------------------------------------------
# multi-reward

_MULTI_REWARD_SYSTEM = (
    "You are a meticulous judge of instruction-based image edits. You compare an original image "
    "with its edited version and assess the edit against the editing instruction. You answer with "
    "JSON only."
)
_MULTI_REWARD_TASK = """\
Judge an image edit. You are given the editing instruction, the original image and the edited image.

Score the edit from three perspectives, each an integer from 0 to 5 \
(5 flawless, 4 a minor flaw, 3 a noticeable flaw, 2 a major flaw, 1 mostly failed, 0 failed entirely):
- instruction_following: does the edited image do what the instruction asks, to the right object, \
attribute, place or style, and nothing else instead?
- detail_preserving: is everything the instruction does not ask to change (other objects, their \
colours and positions, the background, the layout) kept as in the original?
- generation_quality: is the edited image free of artefacts such as noise, blur, blockiness, \
distortion or unnatural blending?
For each perspective first write "feedback": a short phrase naming the specific failure points you \
see, or "None" if there are none; then give "score"."""

_JUDGEMENT = _object({"feedback": _TEXT, "score": _score(0, 5)})


def _multi_reward_rewards(answer: dict) -> dict:
    return {p: {"score": answer[p]["score"], "feedback": answer[p]["feedback"]} for p in PERSPECTIVES}


def _multi_reward_answer(judgement: dict) -> dict:
    return {p: {"feedback": judgement[p]["feedback"], "score": judgement[p]["score"]} for p in PERSPECTIVES}


MULTI_REWARD = Rubric(
    name=MULTI_REWARD_NAME,
    version="1",
    schema_name="multi_reward_judgement",
    system_prompt=_MULTI_REWARD_SYSTEM,
    task_prompt=_MULTI_REWARD_TASK,
    schema=_object({p: _JUDGEMENT for p in PERSPECTIVES}),
    to_rewards=_multi_reward_rewards,
    from_perspectives=_multi_reward_answer,
)

# --------------------------------------------------------------------------------------------
# viescore-edit

_VIESCORE_SYSTEM = (
    "You are a professional digital artist who evaluates AI-edited images. You compare an original "
    "image with its edited version and rate the edit against the editing instruction. You answer "
    "with JSON only."
)
_VIESCORE_TASK = """\
Rate an image edit. You are given the editing instruction, the original image and the edited image. \
All scores are integers from 0 to 10.

Semantic consistency (write "sc_reasoning" first, then the two scores):
- editing_success: how well the edited image carries out the instruction \
(0: not at all, 10: perfectly).
- over_editing: how much of the original is kept apart from the requested change \
(0: the edited image is a different picture altogether, 10: a minimal yet effective edit of the original).

Perceptual quality of the edited image (write "pq_reasoning" first, then the two scores):
- naturalness: does the image look natural: lighting, shadows, proportions, sense of depth \
(0: not at all, 10: entirely natural)?
- artifacts: is it free of artefacts such as distortion, noise, blur, blockiness, watermarks or \
disharmonious blending (0: heavily affected, 10: no artefacts)?"""

_VIESCORE_SCHEMA = _object({
    "sc_reasoning": _TEXT,
    "editing_success": _score(0, 10),
    "over_editing": _score(0, 10),
    "pq_reasoning": _TEXT,
    "naturalness": _score(0, 10),
    "artifacts": _score(0, 10),
})


def _viescore_rewards(answer: dict) -> dict:
    sc_scores = [answer["editing_success"], answer["over_editing"]]
    pq_scores = [answer["naturalness"], answer["artifacts"]]
    sc, pq = float(min(sc_scores)), float(min(pq_scores))
    return {
        "sc": sc, "pq": pq, "o": math.sqrt(sc * pq),
        "sc_scores": sc_scores, "pq_scores": pq_scores,
        "sc_reasoning": answer["sc_reasoning"], "pq_reasoning": answer["pq_reasoning"],
    }


def _joined_feedback(*judgements: dict) -> str:
    failures = [j["feedback"] for j in judgements if j["feedback"] != NO_FAILURE]
    return FEEDBACK_SEPARATOR.join(failures) if failures else NO_FAILURE


def _viescore_answer(judgement: dict) -> dict:
    """Multi-Reward 0..5 -> VIEScore 0..10: editing success = 2 x instruction following,
    over-editing = 2 x detail preserving, naturalness = artifacts = 2 x generation quality."""
    following, details, quality = (judgement[p] for p in PERSPECTIVES)
    return {
        "sc_reasoning": _joined_feedback(following, details),
        "editing_success": 2 * following["score"],
        "over_editing": 2 * details["score"],
        "pq_reasoning": _joined_feedback(quality),
        "naturalness": 2 * quality["score"],
        "artifacts": 2 * quality["score"],
    }


VIESCORE_EDIT = Rubric(
    name=VIESCORE_EDIT_NAME,
    version="1",
    schema_name="viescore_edit_judgement",
    system_prompt=_VIESCORE_SYSTEM,
    task_prompt=_VIESCORE_TASK,
    schema=_VIESCORE_SCHEMA,
    to_rewards=_viescore_rewards,
    from_perspectives=_viescore_answer,
)

# --------------------------------------------------------------------------------------------
# t2i-alignment

_ALIGNMENT_SYSTEM = (
    "You are a meticulous judge of text-to-image generation. You compare a generated image with "
    "the prompt it was generated from. You answer with JSON only."
)
_ALIGNMENT_TASK = """\
Judge how well a generated image matches its prompt. You are given the prompt and the image.

Check every element the prompt asks for: each object, how many there are, their colours and other \
attributes, where they are, the background and the style. First write "feedback": a short phrase \
naming each element that is missing or wrong, or "None" if there is none; then give "score", an \
integer from 0 to 5 (5 every element as asked, 4 one minor deviation, 3 one element wrong, 2 \
several elements wrong, 1 little of the prompt is there, 0 nothing of it)."""


def _alignment_rewards(answer: dict) -> dict:
    return {ALIGNMENT: {"score": answer[ALIGNMENT]["score"], "feedback": answer[ALIGNMENT]["feedback"]}}


def _alignment_answer(judgement: dict) -> dict:
    return {ALIGNMENT: {"feedback": judgement[ALIGNMENT]["feedback"], "score": judgement[ALIGNMENT]["score"]}}


T2I_ALIGNMENT = Rubric(
    name=T2I_ALIGNMENT_NAME,
    version="1",
    schema_name="t2i_alignment_judgement",
    system_prompt=_ALIGNMENT_SYSTEM,
    task_prompt=_ALIGNMENT_TASK,
    schema=_object({ALIGNMENT: _JUDGEMENT}),
    to_rewards=_alignment_rewards,
    from_perspectives=_alignment_answer,
    images=(("image", GENERATED_LABEL),),
    text_label=PROMPT_LABEL,
)

RUBRICS: dict[str, Rubric] = {r.name: r for r in (MULTI_REWARD, VIESCORE_EDIT, T2I_ALIGNMENT)}


def get_rubric(name: str | Rubric) -> Rubric:
    if isinstance(name, Rubric):
        return name
    try:
        return RUBRICS[name]
    except KeyError:
        raise UsageError(f"unknown rubric {name!r}; choose one of {', '.join(RUBRICS)}") from None


def rubric_for_schema(schema_name: str) -> Rubric:
    """The rubric whose structured-output format has this name (what a server receives)."""
    for rubric in RUBRICS.values():
        if rubric.schema_name == schema_name:
            return rubric
    raise KeyError(schema_name)


def read_request(body: dict) -> tuple[Rubric, str, list[str]]:
    """(rubric, instruction or prompt, image URLs in the rubric's order) of a chat request built by
    :meth:`Rubric.messages`.

    Raises ValueError when the request is not one of ours.
    """
    try:
        schema_name = body["response_format"]["json_schema"]["name"]
    except (KeyError, TypeError):
        raise ValueError("the request has no json_schema response_format") from None
    try:
        rubric = rubric_for_schema(schema_name)
    except KeyError:
        raise ValueError(f"unknown response schema {schema_name!r}") from None
    line = re.compile("^" + re.escape(rubric.text_label) + r'(".*")$', re.MULTILINE)
    instruction, urls = None, []
    for message in body.get("messages", ()):
        content = message.get("content")
        if message.get("role") != "user" or not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") == "image_url":
                urls.append(part["image_url"]["url"])
            elif part.get("type") == "text" and instruction is None:
                match = line.search(part.get("text", ""))
                if match:
                    instruction = json.loads(match.group(1))
    if instruction is None:
        raise ValueError("the request names no editing instruction" if rubric.text_label == INSTRUCTION_LABEL
                         else f"the request has no {rubric.text_label.strip(': ').lower()} line")
    if len(urls) != len(rubric.images):
        labels = ", ".join(label.rstrip(":").lower() for _, label in rubric.images)
        raise ValueError(f"expected {len(rubric.images)} image(s) ({labels}), got {len(urls)}")
    return rubric, instruction, urls
