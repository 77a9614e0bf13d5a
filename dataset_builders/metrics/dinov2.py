"""DINOv2 image embeddings for ``dinov2_sim``.

Any DINOv2 checkpoint from transformers (default ``facebook/dinov2-with-registers-large``, the
transformers port of the ``dinov2_vitl14_reg`` UltraEdit used), with the checkpoint's own image
processor (resize, centre crop, ImageNet normalisation). The embedding is ``pooler_output``: the
CLS token after the final layer norm, which is the ``x_norm_clstoken`` that torch.hub's DINOv2
returns from ``model(images)`` (UltraEdit's call), L2-normalised.

``normalize=False`` skips the processor's ImageNet normalisation (pixels stay in [0, 1]), as
UltraEdit's script did; its numbers are then comparable with UltraEdit's published thresholds
(it also resized to 518 px, which the processor's size settings do not reproduce).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_DINOV2_MODEL = "facebook/dinov2-with-registers-large"


class Dinov2Encoder:
    """A DINOv2 model and its image processor (picklable for DataLoader workers)."""

    def __init__(self, model_id: str = DEFAULT_DINOV2_MODEL, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, normalize: bool = True):
        from transformers import AutoImageProcessor, AutoModel

        self.model_id, self.normalize = model_id, normalize
        self.device, self.dtype = torch.device(device), dtype
        self.model = AutoModel.from_pretrained(model_id, dtype=dtype).to(self.device).eval().requires_grad_(False)
        self.image_processor = AutoImageProcessor.from_pretrained(model_id)
        if not normalize:
            self.image_processor.do_normalize = False

    @torch.inference_mode()
    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[N, 3, h, w]`` -> ``[N, D]``: L2-normalised ``pooler_output`` (the normed CLS token), float32."""
        out = self.model(pixel_values=pixel_values.to(self.device, self.dtype))
        return F.normalize(out.pooler_output.float(), dim=-1)
