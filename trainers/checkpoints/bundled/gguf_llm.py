"""Export a causal LM stored as a GGUF file to an ordinary safetensors checkpoint directory.

transformers dequantises GGUF weights on load (`from_pretrained(..., gguf_file=...)`, needs the
`gguf` package) but refuses to `save_pretrained` such a model. The exported directory has the
dequantised weights, the config without its `quantization_config`, the generation config and the
tokenizer with its chat template, so it loads like any Hub checkpoint.
"""

import logging
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

logger = logging.getLogger(__name__)


def export_gguf_causal_lm(gguf_path: str | Path, output_dir: str | Path, dtype: torch.dtype = torch.float32) -> Path:
    """Write the GGUF model at `gguf_path` as a safetensors checkpoint in `output_dir` (weights in
    `dtype`, float32 by default) with its tokenizer and chat template. Returns `output_dir`."""
    gguf_path, output_dir = Path(gguf_path), Path(output_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path}: GGUF file not found")
    logger.info("Loading and dequantising %s", gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32)

    config = gguf_model.config
    # The GGUF quantization config is what makes save_pretrained refuse; the weights are already
    # dequantised, so the config without it describes them exactly.
    del config.quantization_config
    config.dtype = dtype
    state = {name: tensor.to(dtype) for name, tensor in gguf_model.state_dict().items()}
    # A meta-device shell skips a pointless random initialisation: every weight is assigned below,
    # and the buffers left on meta (rotary frequencies) are non-persistent, recomputed on load.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(state, strict=True, assign=True)
    model.tie_weights()
    model.generation_config = gguf_model.generation_config

    logger.info("Writing %s checkpoint to %s", dtype, output_dir)
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    return output_dir
