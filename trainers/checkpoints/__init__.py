"""Making and loading checkpoints: the builder, loaders, provenance of the base models, the bundled
offline models (`bundled/`) and the converter of the authors' release (`original/`)."""

from trainers.checkpoints.builder import build_blsp_emo, save_checkpoint
from trainers.checkpoints.loading import load_blsp_emo, load_text_generator, parse_dtype
from trainers.checkpoints.provenance import describe_base_model

__all__ = ["build_blsp_emo", "describe_base_model", "load_blsp_emo", "load_text_generator", "parse_dtype", "save_checkpoint"]
