"""Which files of a saved checkpoint belong in its Hub repo, checked for completeness."""

import ast
import json
import struct
from pathlib import Path
from typing import Any

from modeling_blsp_emo import PIPELINE_TASK
from trainers.hub.errors import HubPublishError

# Files of a checkpoint that are not remote code, weights or the config, and belong in the repo.
PROCESSOR_FILES = (
    "generation_config.json", "processor_config.json", "preprocessor_config.json", "tokenizer.json",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "chat_template.jinja",
    "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt",
)
REQUIRED_FILES = ("config.json", "processor_config.json", "tokenizer_config.json")


def read_safetensors_header(path: Path) -> dict[str, Any]:
    """The JSON header of a safetensors file (tensor names → dtype/shape/offsets), without reading data."""
    with open(path, "rb") as file:
        (length,) = struct.unpack("<Q", file.read(8))
        return json.loads(file.read(length))


def weight_files(model_dir: Path) -> list[Path]:
    """The checkpoint's safetensors files (one, or the shards of an index)."""
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [name for name in shards if not (model_dir / name).is_file()]
        if missing:
            raise HubPublishError(f"{model_dir}: weight shards {missing} listed in {index.name} are missing")
        return [index] + [model_dir / name for name in shards]
    if (model_dir / "model.safetensors").is_file():
        return [model_dir / "model.safetensors"]
    if list(model_dir.glob("*.bin")):
        raise HubPublishError(f"{model_dir}: weights are pickled (.bin); save the model again with safetensors")
    raise HubPublishError(f"{model_dir}: no model.safetensors found; save the model with trainers.checkpoints.builder.save_checkpoint")


def check_lora_is_publishable(config: dict, weights: list[Path]) -> None:
    """Global-scope LoRA must be merged (the remote code loads without peft); audio-scope LoRA is part
    of the model code and stays."""
    names = [name for path in weights if path.suffix == ".safetensors" for name in read_safetensors_header(path)]
    if any(name.startswith("base_model.model.") for name in names):
        raise HubPublishError(
            "the checkpoint holds unmerged peft LoRA weights (base_model.model.* keys); merge them "
            "(trainers.training.emotion_alignment.finalize) and save again, or use push_model_to_hub"
        )
    if config.get("lora_scope") != "audio" and any(".lora_A." in name or ".lora_B." in name for name in names):
        raise HubPublishError(
            f"the checkpoint has LoRA weights but lora_scope={config.get('lora_scope')!r}: only audio-scope LoRA "
            "is part of the model code; merge global LoRA before publishing"
        )


def remote_code_files(model_dir: Path, config: dict, processor_config: dict) -> list[str]:
    """The Python files the checkpoint's `auto_map` and custom pipeline name, plus every module they
    import relatively (transitively); raises when one is missing."""
    auto_map = {**processor_config.get("auto_map", {}), **config.get("auto_map", {})}
    pipeline = config.get("custom_pipelines", {}).get(PIPELINE_TASK)
    if "AutoModel" not in config.get("auto_map", {}) or pipeline is None or "AutoProcessor" not in auto_map:
        raise HubPublishError(
            f"{model_dir}: config.json needs auto_map (AutoConfig, AutoModel), custom_pipelines['{PIPELINE_TASK}'] and "
            "processor_config.json an AutoProcessor entry; save the checkpoint with trainers.checkpoints.builder.save_checkpoint"
        )
    # "org/repo--module.Class" references code in another repo, which is not ours to upload.
    impls = [entry["impl"] for entry in config["custom_pipelines"].values()]
    references = [reference for reference in [*auto_map.values(), *impls] if "--" not in reference]
    pending = [reference.split(".")[0] + ".py" for reference in references]
    found: list[str] = []
    while pending:
        name = pending.pop()
        if name in found:
            continue
        source = model_dir / name
        if not source.is_file():
            raise HubPublishError(f"{model_dir}: remote-code file {name} is missing (imported by the checkpoint's code)")
        found.append(name)
        for node in ast.walk(ast.parse(source.read_text(), filename=str(source))):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                modules = [node.module] if node.module else [alias.name for alias in node.names]
                pending += [module.split(".")[0] + ".py" for module in modules]
    return sorted(found)


def checkpoint_files(model_dir: str | Path) -> list[Path]:
    """Every file of a saved BLSP-Emo checkpoint that belongs on the Hub, checked for completeness:
    config, safetensors weights, remote code, processor/tokenizer/chat template and generation config.
    Training leftovers (trainer state, optimizer, `checkpoint-*` folders, trained-only weights) stay behind."""
    model_dir = Path(model_dir)
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if missing:
        raise HubPublishError(f"{model_dir}: not a complete BLSP-Emo checkpoint (missing {', '.join(missing)})")
    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "blsp_emo":
        raise HubPublishError(f"{model_dir}: not a BLSP-Emo checkpoint (model_type={config.get('model_type')!r})")
    weights = weight_files(model_dir)
    check_lora_is_publishable(config, weights)
    code = remote_code_files(model_dir, config, json.loads((model_dir / "processor_config.json").read_text()))
    extra = [model_dir / name for name in PROCESSOR_FILES if (model_dir / name).is_file()]
    templates = sorted((model_dir / "additional_chat_templates").glob("*.jinja"))
    return [model_dir / "config.json", *weights, *(model_dir / name for name in code), *extra, *templates]
