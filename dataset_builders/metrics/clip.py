"""CLIP image and text embeddings for UltraEdit's four CLIP metrics.

Any ``CLIPModel`` checkpoint from transformers (default ``openai/clip-vit-large-patch14``, the
ViT-L/14 UltraEdit used) with its own processor: the checkpoint's image processor (resize the
short side, centre crop, CLIP normalisation) and tokenizer (truncated to the text tower's 77
positions). Embeddings are the projected pooled outputs, L2-normalised, as UltraEdit's
``ClipSimilarity`` takes them (its image path squashes to 224 px with bicubic interpolation instead
of the processor's crop; here each model uses its own processor).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .preprocessing import preprocess_many

DEFAULT_CLIP_MODEL = "openai/clip-vit-large-patch14"


class ClipEncoder:
    """A ``CLIPModel`` and its processor; ``image_processor`` is picklable for DataLoader workers."""

    def __init__(self, model_id: str = DEFAULT_CLIP_MODEL, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        from transformers import AutoProcessor, CLIPModel

        self.model_id = model_id
        self.device, self.dtype = torch.device(device), dtype
        self.model = CLIPModel.from_pretrained(model_id, dtype=dtype).to(self.device).eval().requires_grad_(False)
        processor = AutoProcessor.from_pretrained(model_id)
        self.image_processor, self.tokenizer = processor.image_processor, processor.tokenizer
        self.max_length = min(self.tokenizer.model_max_length, self.model.config.text_config.max_position_embeddings)

    def preprocess(self, images: list) -> list[torch.Tensor]:
        """PIL images -> ``[3, h, w]`` pixel values each (what DataLoader workers run)."""
        return preprocess_many(self.image_processor, images)

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, 3, h, w]`` -> ``[N, D]`` L2-normalised float32 embeddings."""
        out = self.model.get_image_features(pixel_values=pixel_values.to(self.device, self.dtype))
        return F.normalize(out.pooler_output.float(), dim=-1)

    @torch.inference_mode()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        """Texts -> ``[N, D]`` L2-normalised float32 embeddings (padded batch, truncated to 77 tokens)."""
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt")
        out = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                           attention_mask=tokens["attention_mask"].to(self.device))
        return F.normalize(out.pooler_output.float(), dim=-1)
