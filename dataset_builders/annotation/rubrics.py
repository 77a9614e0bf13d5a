"""What the judge is asked and what a valid answer is: one prompt, one JSON schema and one
validation per rubric, with a version that goes into every cache key.

Two rubrics:

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

The request carries the instruction on a line of its own (``Editing instruction: "<JSON
string>"``) and the two images in a fixed order, source first; :func:`read_request` reads them
back, which is how the loopback oracle judge knows what it is judging.

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
from editforge.vocabulary import FEEDBACK_SEPARATOR, NO_FAILURE, PERSPECTIVES
from editforge.vocabulary import MULTI_REWARD as MULTI_REWARD_NAME
from editforge.vocabulary import VIESCORE_EDIT as VIESCORE_EDIT_NAME

INSTRUCTION_LABEL = "Editing instruction: "
SOURCE_LABEL = "Original image:"
EDITED_LABEL = "Edited image:"


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
    # Inverse mapping used by the loopback oracle: Multi-Reward judgement -> this rubric's answer.
    from_perspectives: Callable[[dict], dict] = field(repr=False)

    @property
    def response_format(self) -> dict:
        """The structured-output ``response_format`` of a chat completion request."""
        return {"type": "json_schema", "json_schema": {"name": self.schema_name, "strict": True, "schema": self.schema}}

    def messages(self, instruction: str, source_url: str, edited_url: str) -> list[dict]:
        """Chat messages asking for a judgement of one triplet (images as data URLs, source first)."""
        text = f"{self.task_prompt}\n\n{INSTRUCTION_LABEL}{json.dumps(instruction, ensure_ascii=False)}"
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": [
                {"type": "text", "text": text},
                {"type": "text", "text": SOURCE_LABEL},
                {"type": "image_url", "image_url": {"url": source_url}},
                {"type": "text", "text": EDITED_LABEL},
                {"type": "image_url", "image_url": {"url": edited_url}},
            ]},
        ]

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

RUBRICS: dict[str, Rubric] = {r.name: r for r in (MULTI_REWARD, VIESCORE_EDIT)}


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


_INSTRUCTION_LINE = re.compile("^" + re.escape(INSTRUCTION_LABEL) + r'(".*")$', re.MULTILINE)


def read_request(body: dict) -> tuple[Rubric, str, list[str]]:
    """(rubric, instruction, [source_url, edited_url]) of a chat request built by :meth:`Rubric.messages`.

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
    instruction, urls = None, []
    for message in body.get("messages", ()):
        content = message.get("content")
        if message.get("role") != "user" or not isinstance(content, list):
            continue
        for part in content:
            if part.get("type") == "image_url":
                urls.append(part["image_url"]["url"])
            elif part.get("type") == "text" and instruction is None:
                match = _INSTRUCTION_LINE.search(part.get("text", ""))
                if match:
                    instruction = json.loads(match.group(1))
    if instruction is None:
        raise ValueError("the request names no editing instruction")
    if len(urls) != 2:
        raise ValueError(f"expected 2 images (original, edited), got {len(urls)}")
    return rubric, instruction, urls
