"""What the LLM is asked for one subtopic and what a valid answer is (InstructEngine's prompts).

One chat request per (theme, subtopic) asks for ``count`` base prompts and, for each, one
contrasting variant per contrast axis, as JSON under a structured-output schema::

    {"prompts": [{"base": "...", "content": "...", "counterfactual": "...", "aesthetics": "..."}, ...]}

The request carries the theme, the subtopic, the count and the axes on labelled lines of their
own (theme and subtopic as JSON strings), so a server reads back exactly what was asked
(:func:`read_request`; the built-in synthetic-world writer does). An answer is never repaired:
not JSON, a missing or extra field, an empty prompt or another number of prompts than asked
raises InvalidAnswer; the client asks again and, in the end, records the subtopic as missing.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import ClassVar

from editforge.errors import UsageError
from editforge.vocabulary import CONTRAST_AXES

from ..annotation.rubrics import InvalidAnswer, json_answer, validate

FORMAT_NAME = "instructengine-prompts"
SCHEMA_NAME = "instructengine_prompts"
BASE = "base"  # the answer's field holding a base prompt; each axis's variant is under the axis's name

THEME_LABEL = "Theme: "
SUBTOPIC_LABEL = "Subtopic: "
COUNT_LABEL = "Number of base prompts: "
AXES_LABEL = "Contrast axes: "

# What a contrasting variant changes, per axis of editforge.vocabulary.CONTRAST_AXES.
AXIS_GUIDES = {
    "content": "change the content: another type of one object, another count of an object, or another "
               "attribute (colour, material, size) of one object",
    "counterfactual": "make the scene counterfactual: the same kinds of things in an arrangement that "
                      "contradicts the base prompt or common sense (attributes or places swapped between "
                      "objects, an object doing or being what it does not)",
    "aesthetics": "change only the aesthetics: art style, medium, lighting or colour palette; the content "
                  "stays the same",
}

SYSTEM_PROMPT = (
    "You write prompts for text-to-image models: each prompt is one sentence that describes a single "
    "image concretely (objects, counts, attributes, positions, style). You answer with JSON only."
)


@dataclass(frozen=True)
class PromptRequest:
    """What one request asks for."""

    theme: str
    subtopic: str
    count: int
    axes: tuple[str, ...]


def fold(text: str) -> str:
    """White space folded to single spaces, ends stripped."""
    return " ".join(text.split())


@dataclass(frozen=True)
class PromptFormat:
    """The answer format of requests for ``count`` base prompts with a variant per axis of ``axes``
    (an answer format of :class:`~editforge.dataset_builders.annotation.JudgeClient`).

    ``version`` goes into every cache key: change it whenever the prompt text or the schema
    changes, so answers to the old question are never served for the new one.
    """

    count: int
    axes: tuple[str, ...] = CONTRAST_AXES

    name: ClassVar[str] = FORMAT_NAME
    version: ClassVar[str] = "1"

    def __post_init__(self):
        if self.count < 1:
            raise UsageError(f"the number of base prompts per subtopic must be 1 or more, got {self.count}")
        unknown = [a for a in self.axes if a not in CONTRAST_AXES]
        if unknown or not self.axes or len(set(self.axes)) != len(self.axes):
            raise UsageError(f"contrast axes must be distinct names among {', '.join(CONTRAST_AXES)}, "
                             f"got {', '.join(self.axes) or 'none'}")

    @property
    def schema(self) -> dict:
        fields = (BASE,) + self.axes
        item = {"type": "object", "properties": {f: {"type": "string"} for f in fields}, "required": list(fields),
                "additionalProperties": False}
        return {"type": "object", "properties": {"prompts": {"type": "array", "items": item}},
                "required": ["prompts"], "additionalProperties": False}

    @property
    def response_format(self) -> dict:
        return {"type": "json_schema", "json_schema": {"name": SCHEMA_NAME, "strict": True, "schema": self.schema}}

    def task_prompt(self) -> str:
        guides = "\n".join(f"- {axis}: {AXIS_GUIDES[axis]}" for axis in self.axes)
        return (
            f"Write {self.count} distinct base prompts about the subtopic below (part of the theme). For each base "
            f"prompt also write one contrasting variant per contrast axis. A variant keeps the base prompt's wording "
            f"except for the one change its axis asks for, so that an image made for one prompt clearly does not fit "
            f"the other:\n{guides}\n"
            f'Answer {{"prompts": [...]}} with exactly {self.count} objects, each with "{BASE}" (the base prompt) and '
            f"one field per axis (its variant)."
        )

    def messages(self, theme: str, subtopic: str) -> list[dict]:
        """Chat messages asking for the prompts of one subtopic."""
        text = (f"{self.task_prompt()}\n\n{THEME_LABEL}{json.dumps(theme, ensure_ascii=False)}\n"
                f"{SUBTOPIC_LABEL}{json.dumps(subtopic, ensure_ascii=False)}\n"
                f"{COUNT_LABEL}{self.count}\n{AXES_LABEL}{', '.join(self.axes)}")
        return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": text}]

    def parse(self, content: str | None) -> dict:
        """``{"prompts": [{"base": ..., <axis>: ...}, ...]}`` (white space folded) of an answer's
        text; InvalidAnswer when it is not a valid answer."""
        prompts = validate(json_answer(content), self.schema)["prompts"]
        if len(prompts) != self.count:
            raise InvalidAnswer(f"answer.prompts: expected {self.count} prompts, got {len(prompts)}")
        folded = [{name: fold(text) for name, text in item.items()} for item in prompts]
        for i, item in enumerate(folded):
            empty = [name for name, text in item.items() if not text]
            if empty:
                raise InvalidAnswer(f"answer.prompts[{i}]: empty {', '.join(empty)}")
        return {"prompts": folded}


def _line(label: str, text: str) -> str | None:
    match = re.search("^" + re.escape(label) + "(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else None


def read_request(body: dict) -> PromptRequest:
    """What a chat request built by :meth:`PromptFormat.messages` asks for; ValueError when the
    request is not one of ours."""
    try:
        if body["response_format"]["json_schema"]["name"] != SCHEMA_NAME:
            raise ValueError(f"expected the {SCHEMA_NAME} response schema")
    except (KeyError, TypeError):
        raise ValueError("the request has no json_schema response_format") from None
    text = "\n".join(m["content"] for m in body.get("messages", ())
                     if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str))
    fields = {label: _line(label, text) for label in (THEME_LABEL, SUBTOPIC_LABEL, COUNT_LABEL, AXES_LABEL)}
    absent = [label.strip(": ") for label, value in fields.items() if value is None]
    if absent:
        raise ValueError(f"the request names no {', '.join(absent).lower()}")
    try:
        theme, subtopic = json.loads(fields[THEME_LABEL]), json.loads(fields[SUBTOPIC_LABEL])
        count = int(fields[COUNT_LABEL])
    except ValueError:
        raise ValueError("the request's theme, subtopic or count is malformed") from None
    if not (isinstance(theme, str) and isinstance(subtopic, str)):
        raise ValueError("the request's theme and subtopic must be JSON strings")
    axes = tuple(a.strip() for a in fields[AXES_LABEL].split(","))
    PromptFormat(count, axes)  # checks the count and the axes (a UsageError is a ValueError)
    return PromptRequest(theme, subtopic, count, axes)
