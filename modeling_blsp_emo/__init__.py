"""BLSP-Emo remote code: everything a checkpoint needs to load without this package installed."""

from transformers import AutoConfig, AutoModel, AutoProcessor
from transformers.pipelines import PIPELINE_REGISTRY

from .audio_loading import AudioInputError, load_audio
from .configuration_blsp_emo import DEFAULT_EMOTIONS, BlspEmoConfig
from .modeling_blsp_emo import PIPELINE_TASK, BlspEmoForConditionalGeneration, BlspEmoModel, BlspEmoPreTrainedModel
from .pipeline_blsp_emo import AudioToTextPipeline
from .processing_blsp_emo import BlspEmoProcessor
from .speech_lengths import num_speech_embeddings
from .version import __version__

AutoConfig.register(BlspEmoConfig.model_type, BlspEmoConfig, exist_ok=True)
# The pipeline loads through `AutoModel` and needs `generate`, so AutoModel maps to the LM-head class.
AutoModel.register(BlspEmoConfig, BlspEmoForConditionalGeneration, exist_ok=True)
AutoProcessor.register(BlspEmoConfig, BlspEmoProcessor, exist_ok=True)
BlspEmoConfig.register_for_auto_class()
BlspEmoForConditionalGeneration.register_for_auto_class("AutoModel")
BlspEmoProcessor.register_for_auto_class("AutoProcessor")
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK, pipeline_class=AudioToTextPipeline, pt_model=AutoModel, type="multimodal"
)

__all__ = [
    "DEFAULT_EMOTIONS",
    "AudioInputError",
    "AudioToTextPipeline",
    "BlspEmoConfig",
    "BlspEmoForConditionalGeneration",
    "BlspEmoModel",
    "BlspEmoPreTrainedModel",
    "BlspEmoProcessor",
    "load_audio",
    "num_speech_embeddings",
    "__version__",
]
