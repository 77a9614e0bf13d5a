"""editforge's shared vocabulary: the names every layer agrees on, defined once.

The reward perspectives of Multi-Reward as Condition, the text that means "no failure", the
quality metrics of UltraEdit, VIEScore's scores, the image columns of the canonical features and
the judge's rubric names. This module imports nothing (it is read by the CLI at start-up, by the
dataset schema, the judge, the training scripts and the synthetic world alike).

Hub code files that must stay self-contained (``pipelines/reward_conditioner.py``) keep their own
copy of what they need, marked as a copy; ``tests/test_vocabulary.py`` checks that they are equal.
"""

# Multi-Reward as Condition (arXiv 2411.04713): the judge's three perspectives, in this order
# everywhere (a score tensor [B, 3] is indexed by it).
PERSPECTIVES = ("instruction_following", "detail_preserving", "generation_quality")
# The feedback of a perspective with no failure point, and how the three are joined into one text.
NO_FAILURE = "None"
FEEDBACK_SEPARATOR = "; "
MIN_REWARD, MAX_REWARD = 0, 5

# UltraEdit (arXiv 2407.05282): CLIP / DINOv2 / SSIM quality metrics of an edit triplet.
METRIC_NAMES = ("clip_sim_source", "clip_sim_target", "clip_sim_dir", "clip_sim_image", "dinov2_sim", "ssim")

# VIEScore (OmniEdit): semantic consistency, perceptual quality, overall, 0..10.
VIESCORE_SCORES = ("sc", "pq", "o")

# Image columns of the canonical features (editforge.dataset_builders.features).
EDIT_IMAGE_COLUMNS = ("source_image", "edited_image", "mask_image")
PAIR_IMAGE_COLUMNS = ("image_0", "image_1")

# The judge's rubrics (editforge.dataset_builders.annotation.rubrics).
MULTI_REWARD = "multi-reward"
VIESCORE_EDIT = "viescore-edit"
T2I_ALIGNMENT = "t2i-alignment"  # a generated image against its prompt (text-to-image suites, preference pairs)
RUBRIC_NAMES = (MULTI_REWARD, VIESCORE_EDIT, T2I_ALIGNMENT)
# The one perspective of t2i-alignment: how much of the prompt the image shows, 0..5.
ALIGNMENT = "alignment"

# InstructEngine (arXiv 2504.10329): the axes along which a prompt's contrasting variant differs
# (the `contrast` column of preference pairs).
CONTRAST_AXES = ("content", "counterfactual", "aesthetics")
