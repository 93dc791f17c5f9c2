"""Converting the authors' released BLSP-Emo checkpoint into this package's format."""

from trainers.checkpoints.original.convert import convert_original
from trainers.checkpoints.original.layout import ConversionError

__all__ = ["ConversionError", "convert_original"]
