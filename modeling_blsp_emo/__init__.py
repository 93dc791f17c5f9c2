"""BLSP-Emo remote code: everything a checkpoint needs to load without this package installed."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForAudioClassification,
    AutoModelForCausalLM,
    AutoModelForMultimodalLM,
    AutoProcessor,
)
from transformers.pipelines import PIPELINE_REGISTRY

from .audio_loading import AudioInputError, load_audio
from .configuration_blsp_emo import DEFAULT_EMOTIONS, BlspEmoConfig
from .modeling_blsp_emo import (
    CLASSIFICATION_TASK,
    PIPELINE_TASK,
    BlspEmoForAudioClassification,
    BlspEmoForConditionalGeneration,
    BlspEmoModel,
    BlspEmoPreTrainedModel,
)
from .pipeline_audio_classification import AudioClassificationPipeline
from .pipeline_blsp_emo import AudioToTextPipeline
from .processing_blsp_emo import BlspEmoProcessor
from .reply_generation import REPLY_GENERATION_DEFAULTS
from .speech_lengths import num_speech_embeddings
from .version import __version__

AutoConfig.register(BlspEmoConfig.model_type, BlspEmoConfig, exist_ok=True)
# The audio-to-text pipeline loads through `AutoModel` and needs `generate`, so AutoModel maps to the
# LM-head class, as do AutoModelForCausalLM and AutoModelForMultimodalLM (transformers 5's class for
# audio/vision LLMs). These map only BlspEmoConfig: nothing changes for other models.
for auto_class in (AutoModel, AutoModelForCausalLM, AutoModelForMultimodalLM):
    auto_class.register(BlspEmoConfig, BlspEmoForConditionalGeneration, exist_ok=True)
AutoModelForAudioClassification.register(BlspEmoConfig, BlspEmoForAudioClassification, exist_ok=True)
AutoProcessor.register(BlspEmoConfig, BlspEmoProcessor, exist_ok=True)
BlspEmoConfig.register_for_auto_class()
BlspEmoForConditionalGeneration.register_for_auto_class("AutoModel")
BlspEmoForAudioClassification.register_for_auto_class("AutoModelForAudioClassification")
BlspEmoProcessor.register_for_auto_class("AutoProcessor")
# "audio-to-text" is not a transformers task, so registering it takes nothing from anyone. The
# `audio-classification` pipeline is NOT registered: it would replace transformers' own for every
# model; checkpoints declare it in their config (`custom_pipelines`) instead.
PIPELINE_REGISTRY.register_pipeline(
    PIPELINE_TASK, pipeline_class=AudioToTextPipeline, pt_model=AutoModel, type="multimodal"
)

__all__ = [
    "CLASSIFICATION_TASK",
    "DEFAULT_EMOTIONS",
    "REPLY_GENERATION_DEFAULTS",
    "AudioClassificationPipeline",
    "AudioInputError",
    "AudioToTextPipeline",
    "BlspEmoConfig",
    "BlspEmoForAudioClassification",
    "BlspEmoForConditionalGeneration",
    "BlspEmoModel",
    "BlspEmoPreTrainedModel",
    "BlspEmoProcessor",
    "load_audio",
    "num_speech_embeddings",
    "__version__",
]
