"""Loading models and processors for the command line."""

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from modeling_blsp_emo import BlspEmoConfig, BlspEmoForConditionalGeneration, BlspEmoProcessor


def parse_dtype(name: str | None) -> torch.dtype | str | None:
    """`"bfloat16"` → `torch.bfloat16`; `"auto"`/None pass through."""
    if name in (None, "auto"):
        return name
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} (try float32, bfloat16 or float16)")
    return dtype


def load_blsp_emo(path: str, dtype: str | None = None, device_map=None) -> tuple[BlspEmoForConditionalGeneration, BlspEmoProcessor]:
    """A BLSP-Emo checkpoint and its processor."""
    config = AutoConfig.from_pretrained(path)
    if not isinstance(config, BlspEmoConfig):
        raise ValueError(f"{path}: not a BLSP-Emo checkpoint (model_type={config.model_type!r}); build one with `blsp-emo init`")
    model = BlspEmoForConditionalGeneration.from_pretrained(path, dtype=parse_dtype(dtype), device_map=device_map)
    return model, BlspEmoProcessor.from_pretrained(path)


def load_text_generator(path: str, dtype: str | None = None, device_map=None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The LLM that writes targets: a BLSP-Emo checkpoint (its LLM, text only) or any causal LM."""
    if isinstance(AutoConfig.from_pretrained(path), BlspEmoConfig):
        model, processor = load_blsp_emo(path, dtype, device_map)
        return model, processor.tokenizer
    model = AutoModelForCausalLM.from_pretrained(path, dtype=parse_dtype(dtype), device_map=device_map)
    return model, AutoTokenizer.from_pretrained(path)
