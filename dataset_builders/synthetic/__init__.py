"""The synthetic editing world: deterministic scenes of coloured shapes, edits of the six task
kinds with controlled imperfections and ground-truth rewards, and an oracle judge that reads
pixels only. It stands in for real data and for GPT-4o in tests and in ``editforge demo``."""

from .alignment import judge_alignment, parse_prompt, render_prompt
from .edits import STYLES, TASKS, Edit, apply_edit, instruction_text, parse_instruction
from .generator import Triplet, generate_triplet, write_synthetic_dataset
from .oracle import OracleError, OracleJudge, read_image
from .rubric import PERSPECTIVES
from .world import Scene, Shape, caption, random_scene, render

__all__ = [
    "judge_alignment", "parse_prompt", "render_prompt",
    "STYLES", "TASKS", "Edit", "apply_edit", "instruction_text", "parse_instruction",
    "Triplet", "generate_triplet", "write_synthetic_dataset",
    "OracleError", "OracleJudge", "read_image", "PERSPECTIVES",
    "Scene", "Shape", "caption", "random_scene", "render",
]
