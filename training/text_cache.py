"""Text embeddings computed once: ``--cache_text_embeddings`` of the trainers with frozen text encoders.

    cache = PromptEmbeddingCache(set(dataset["prompt"]), encode)   # encode(prompts) -> (embeds, pooled)
    embeds, pooled = cache(batch_prompts)                         # stacked, on the cache's device

``encode`` is the trainer's own per-batch text encoding (pooled may be None, as for SD1.5's single
CLIP), run here on chunks of the distinct prompts in sorted order, under ``torch.no_grad``. A
prompt's embedding does not depend on the other prompts of its chunk (each is padded to the
tokenizer's full length), so the cached values equal encoding every step up to the float
rounding of another batch size.
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch


class PromptEmbeddingCache:
    """``{prompt: (embeddings, pooled or None)}`` of every distinct prompt, looked up per batch."""

    def __init__(self, prompts: Iterable[str], encode: Callable[[list[str]], tuple], batch_size: int = 32):
        self.entries: dict[str, tuple] = {}
        distinct = sorted(set(prompts))
        with torch.no_grad():
            for begin in range(0, len(distinct), batch_size):
                chunk = distinct[begin: begin + batch_size]
                embeds, pooled = encode(chunk)
                for i, text in enumerate(chunk):
                    self.entries[text] = (embeds[i], None if pooled is None else pooled[i])

    def __len__(self) -> int:
        return len(self.entries)

    def __call__(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor | None]:
        rows = [self.entries[p] for p in prompts]
        pooled = None if rows[0][1] is None else torch.stack([r[1] for r in rows])
        return torch.stack([r[0] for r in rows]), pooled


__all__ = ["PromptEmbeddingCache"]
