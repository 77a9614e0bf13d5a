"""Near-duplicate prompts: Jaccard similarity of word-trigram sets, found without comparing every pair.

A prompt is lower-cased, cut into words (``\\w+``), padded with a start and an end mark and turned
into the set of its word trigrams (3-word shingles). Shingles rather than single words, because
prompts that differ only in which word goes with which ("a red circle and a blue square" / "a
blue circle and a red square") are different prompts (a counterfactual variant is exactly that)
and have the same words; trigrams rather than bigrams, because prompts built from a small
vocabulary (the synthetic world's captions) share most of their bigrams ("at the", "the top")
even when they describe different scenes. Two prompts are near-duplicates when the Jaccard
similarity of their sets is at least the threshold; an identical text after normalisation has
similarity 1. (Measured on the synthetic writer's captions: different scenes <= 0.75, one word
changed in a 30-word caption 0.85.)

:class:`NearDuplicates` keeps prompts in the order offered and rejects one that is a
near-duplicate of a prompt kept before it. Candidates come from prefix filtering (Bayardo et al.,
"Scaling up all pairs similarity search", 2007): with every set sorted by one global order, two
sets with Jaccard >= t share a trigram among the first ``|x| - ceil(t * |x|) + 1`` of each, so
only prompts sharing such a trigram are compared, exactly.
"""

from __future__ import annotations

import math
import re
from collections import Counter, defaultdict
from collections.abc import Sequence

DEFAULT_THRESHOLD = 0.9
SHINGLE = 3  # words per shingle
_START, _END = "\x02", "\x03"


def words(text: str) -> list[str]:
    """A prompt's words, lower-cased: what is left of it once case, punctuation and spacing go."""
    return re.findall(r"\w+", text.lower())


def shingles(text: str) -> frozenset[str]:
    """The word trigrams of a prompt (lower-cased, with start and end marks)."""
    marked = [_START] + words(text) + [_END]
    return frozenset(" ".join(marked[i:i + SHINGLE]) for i in range(max(len(marked) - SHINGLE + 1, 1)))


def jaccard(a: frozenset, b: frozenset) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


class NearDuplicates:
    """First-come-first-kept deduplication of ``texts`` (all of them known up front, for the
    global shingle order) at ``threshold`` (0 < threshold <= 1)."""

    def __init__(self, texts: Sequence[str], threshold: float = DEFAULT_THRESHOLD):
        if not 0 < threshold <= 1:
            raise ValueError(f"the near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self._sets = {text: shingles(text) for text in texts}
        frequency = Counter(gram for grams in self._sets.values() for gram in grams)
        self._rank = {gram: (count, gram) for gram, count in frequency.items()}  # rare shingles first
        self._kept: list[tuple[str, frozenset]] = []
        self._index: dict[str, list[int]] = defaultdict(list)

    def _prefix(self, grams: frozenset) -> list[str]:
        ordered = sorted(grams, key=self._rank.__getitem__)
        return ordered[: len(ordered) - math.ceil(self.threshold * len(ordered)) + 1]

    def match(self, text: str) -> str | None:
        """The kept prompt ``text`` is a near-duplicate of (None: it is new, and is kept now)."""
        grams = self._sets[text]
        prefix = self._prefix(grams)
        for candidate in sorted({i for gram in prefix for i in self._index.get(gram, ())}):
            kept, kept_grams = self._kept[candidate]
            if jaccard(grams, kept_grams) >= self.threshold:
                return kept
        for gram in prefix:
            self._index[gram].append(len(self._kept))
        self._kept.append((text, grams))
        return None
