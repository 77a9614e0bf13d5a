"""editforge.pipelines: custom diffusers pipelines and their components.

Each module meant to be published as Hub custom code is self-contained (torch, diffusers,
transformers only); this package file only gathers the public names.
"""

from .pipeline_reward_pix2pix import RewardConditionedPix2PixPipeline
from .pipeline_sd3_instruct_pix2pix import StableDiffusion3InstructPix2PixPipeline, widen_patch_embedding
from .reward_conditioner import PERSPECTIVES, RewardConditioner, encode_reward_feedback, join_reward_feedback

__all__ = [
    "PERSPECTIVES",
    "RewardConditionedPix2PixPipeline",
    "RewardConditioner",
    "StableDiffusion3InstructPix2PixPipeline",
    "encode_reward_feedback",
    "join_reward_feedback",
    "widen_patch_embedding",
]
