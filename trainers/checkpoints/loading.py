"""Loading models and processors for the command line, with errors that name what is wrong."""

from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from modeling_blsp_emo import BlspEmoConfig, BlspEmoForConditionalGeneration, BlspEmoProcessor
from processing.errors import UserInputError


def parse_dtype(name: str | None) -> torch.dtype | str | None:
    """`"bfloat16"` → `torch.bfloat16`; `"auto"`/None pass through."""
    if name in (None, "auto"):
        return name
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise UserInputError(f"unknown dtype {name!r} (try float32, bfloat16 or float16)", field="--dtype")
    return dtype


def load_config(path: str) -> AutoConfig:
    """The config of a local checkpoint folder or a Hub model; a `UserInputError` when there is none."""
    local = Path(path)
    if local.exists():
        if not local.is_dir():
            raise UserInputError("is a file, expected a checkpoint folder", path=path)
        if not (local / "config.json").is_file():
            raise UserInputError("not a checkpoint: no config.json in this folder", path=path)
    elif path.startswith(("/", ".", "~")) or path.count("/") > 1:
        raise UserInputError("no such checkpoint folder", path=path)
    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as error:
        raise UserInputError(f"cannot read the checkpoint's config ({error})".replace("\n", " "), path=path) from error


def load_blsp_emo_config(path: str) -> BlspEmoConfig:
    """The config of a BLSP-Emo checkpoint (cheap: no weights), checked to be one."""
    config = load_config(path)
    if not isinstance(config, BlspEmoConfig):
        raise UserInputError(
            f"not a BLSP-Emo checkpoint (model_type={config.model_type!r}); build one with `blsp-emo init`", path=path
        )
    return config


def load_blsp_emo(
    path: str, dtype: str | None = None, device_map=None, model_class: type[PreTrainedModel] = BlspEmoForConditionalGeneration
) -> tuple[PreTrainedModel, BlspEmoProcessor]:
    """A BLSP-Emo checkpoint and its processor. A weights file that does not load (half written,
    truncated, corrupt header) is named in the error. `model_class=BlspEmoForAudioClassification`
    loads only the encoder, adapter and emotion head (the LLM's weights are skipped)."""
    load_blsp_emo_config(path)
    try:
        model = model_class.from_pretrained(path, dtype=parse_dtype(dtype), device_map=device_map)
    except Exception as error:
        broken = unreadable_weight_file(path)
        if broken is not None:
            raise UserInputError(f"cannot load the weights: {broken[1]} (half written or corrupt?)", path=broken[0]) from error
        if "mismatched_sizes" in str(error):  # transformers' size-mismatch report
            raise UserInputError(
                "the weights' shapes do not match config.json (was it edited after saving? e.g. emotion_pooling or "
                "the emotion labels decide the emotion head's shape)", path=path
            ) from error
        raise
    return model, BlspEmoProcessor.from_pretrained(path)


def require_finite_weights(model: torch.nn.Module, path: str) -> None:
    """Refuse weights holding NaN or infinity (a corrupt or diverged checkpoint) before training from
    them: the loss would be NaN from the first step, and Trainer's logging filters NaN losses out."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise UserInputError(f"weight {name} holds NaN or infinite values (a corrupt or diverged checkpoint?)", path=path)


def unreadable_weight_file(path: str) -> tuple[Path, str] | None:
    """The first safetensors file of a local checkpoint that cannot be opened, or whose header
    promises more data than the file holds, with the reason; None when all look whole."""
    from safetensors import safe_open

    for file in sorted(Path(path).glob("*.safetensors")) if Path(path).is_dir() else ():
        try:
            with safe_open(file, framework="pt") as weights:
                for name in weights.keys():
                    weights.get_slice(name)
        except Exception as error:  # safetensors raises its own error types, by version
            return file, f"{type(error).__name__}: {error}"
    return None


def load_text_generator(path: str, dtype: str | None = None, device_map=None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The LLM that writes targets: a BLSP-Emo checkpoint (its LLM, text only) or any causal LM."""
    if isinstance(load_config(path), BlspEmoConfig):
        model, processor = load_blsp_emo(path, dtype, device_map)
        return model, processor.tokenizer
    model = AutoModelForCausalLM.from_pretrained(path, dtype=parse_dtype(dtype), device_map=device_map)
    return model, AutoTokenizer.from_pretrained(path)
