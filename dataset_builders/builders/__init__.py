"""One ``datasets.GeneratorBasedBuilder`` per source layout, all writing the canonical features."""

from .base import EditforgeBuilder, EditforgeBuilderConfig
from .instructpix2pix import InstructPix2Pix
from .magicbrush import MagicBrush
from .manifest import Manifest, ManifestConfig
from .omniedit import OmniEdit
from .parquet_source import ParquetBuilder, ParquetBuilderConfig
from .pickapic import PickAPic
from .rewardedit20k import RewardEdit20K, RewardEdit20KConfig
from .ultraedit import UltraEdit

__all__ = [
    "EditforgeBuilder", "EditforgeBuilderConfig", "ParquetBuilder", "ParquetBuilderConfig",
    "Manifest", "ManifestConfig", "RewardEdit20K", "RewardEdit20KConfig",
    "InstructPix2Pix", "MagicBrush", "UltraEdit", "OmniEdit", "PickAPic",
]
