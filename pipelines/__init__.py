"""editforge.pipelines: custom diffusers pipelines and their components.

Each module meant to be published as Hub custom code is self-contained (torch, diffusers,
transformers only); this package file only gathers the public names.
"""

from .pipeline_reward_pix2pix import RewardConditionedPix2PixPipeline
from .reward_conditioner import PERSPECTIVES, RewardConditioner, encode_reward_feedback, join_reward_feedback

__all__ = [
    "PERSPECTIVES",
    "RewardConditionedPix2PixPipeline",
    "RewardConditioner",
    "encode_reward_feedback",
    "join_reward_feedback",
]
