"""LoRA applied only at chosen token positions (the release's "audio" scope), without peft.

The per-token mask is a forward argument of the LLM backbone (`lora_mask=`), which passes its
keyword arguments on to every decoder block. A block hands the mask to its LoRA layers for the
duration of its own `forward` only. Because transformers checkpoints a block's `forward` with its
keyword arguments, a recomputation under gradient checkpointing sees the same mask, and no mask
outlives the call that it belongs to (batched and cached generation stay correct).
"""

import math

import torch
from torch import nn
from transformers import initialization as init


class MaskedLoraLinear(nn.Module):
    """`base_layer(x) + mask * B(A(dropout(x))) * alpha / rank`; `mask` is `(batch, seq)`.

    With no mask the layer is exactly `base_layer`: text-only inputs get the base LLM's outputs.
    """

    def __init__(self, base_layer: nn.Linear, rank: int, alpha: float, dropout: float):
        super().__init__()
        self.base_layer = base_layer
        placement = {"device": base_layer.weight.device, "dtype": base_layer.weight.dtype}
        self.lora_A = nn.Linear(base_layer.in_features, rank, bias=False, **placement)
        self.lora_B = nn.Linear(rank, base_layer.out_features, bias=False, **placement)
        self.lora_dropout = nn.Dropout(dropout)
        self.scaling = alpha / rank
        self.block_mask: torch.Tensor | None = None  # set by the enclosing block during its forward
        self.reset_lora_parameters()

    def reset_lora_parameters(self) -> None:
        """peft's default initialisation: A random, B zero, so a fresh layer changes nothing.
        Weights loaded from a checkpoint (flagged by transformers' loading) are left alone."""
        init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))
        init.zeros_(self.lora_B.weight)

    def forward(self, hidden_states: torch.Tensor, lora_mask: torch.Tensor | None = None) -> torch.Tensor:
        output = self.base_layer(hidden_states)
        mask = lora_mask if lora_mask is not None else self.block_mask
        if mask is None:
            return output
        delta = self.lora_B(self.lora_A(self.lora_dropout(hidden_states.to(self.lora_A.weight.dtype))))
        return output + (delta * self.scaling * mask[..., None].to(delta.dtype)).to(output.dtype)


_MASKED_BLOCK_CLASSES: dict[type, type] = {}


def masked_block_class(block_class: type[nn.Module]) -> type[nn.Module]:
    """A subclass of an LLM block class whose `forward` accepts `lora_mask=` and lends it to the
    block's `MaskedLoraLinear` layers. It keeps the class name, so `_no_split_modules` still match."""
    if block_class not in _MASKED_BLOCK_CLASSES:

        def forward(self, *args, lora_mask: torch.Tensor | None = None, **kwargs):
            self.received_lora_mask = lora_mask is not None
            for layer in self.masked_lora_layers:
                layer.block_mask = lora_mask
            try:
                return block_class.forward(self, *args, **kwargs)
            finally:
                for layer in self.masked_lora_layers:
                    layer.block_mask = None

        _MASKED_BLOCK_CLASSES[block_class] = type(
            block_class.__name__,
            (block_class,),
            {"forward": forward, "__module__": block_class.__module__, "__qualname__": block_class.__qualname__},
        )
    return _MASKED_BLOCK_CLASSES[block_class]


def decoder_blocks(backbone: nn.Module) -> list[nn.Module]:
    """The LLM's repeated blocks, found through the class names in its `_no_split_modules`."""
    block_names = set(getattr(backbone, "_no_split_modules", None) or ())
    blocks = [module for module in backbone.modules() if type(module).__name__ in block_names]
    if not blocks:
        raise ValueError(
            f"{type(backbone).__name__} declares no decoder block class in `_no_split_modules`; "
            "lora_scope='audio' cannot find where to apply LoRA"
        )
    return blocks


def add_masked_lora(
    backbone: nn.Module, rank: int, alpha: float, dropout: float, target_modules: list[str] | None = None
) -> list[str]:
    """Wrap the linear layers of every decoder block of `backbone` in `MaskedLoraLinear`.

    `target_modules` lists layer names (the last part of the module path, e.g. `"q_proj"`); `None`
    targets every linear layer. Returns the wrapped module paths relative to the backbone.
    """
    blocks = decoder_blocks(backbone)
    block_ids = {id(block) for block in blocks}
    block_paths = {id(module): name for name, module in backbone.named_modules() if id(module) in block_ids}
    wrapped = []
    for block in blocks:
        targets = [
            (name, module)
            for name, module in block.named_modules()
            if isinstance(module, nn.Linear) and (target_modules is None or name.rsplit(".", 1)[-1] in target_modules)
        ]
        for name, linear in targets:
            parent_name, _, child_name = name.rpartition(".")
            parent = block.get_submodule(parent_name) if parent_name else block
            setattr(parent, child_name, MaskedLoraLinear(linear, rank, alpha, dropout))
            wrapped.append(f"{block_paths[id(block)]}.{name}")
        block.__class__ = masked_block_class(type(block))
        block.masked_lora_layers = [module for module in block.modules() if isinstance(module, MaskedLoraLinear)]
    if not wrapped:
        raise ValueError(f"no linear layer of {type(backbone).__name__} matches lora_target_modules={target_modules}")
    return wrapped


def check_lora_mask_reached_blocks(backbone: nn.Module) -> None:
    """Raise if a backbone dropped the `lora_mask` keyword instead of passing it to its blocks."""
    for block in decoder_blocks(backbone):
        if hasattr(block, "masked_lora_layers") and not block.received_lora_mask:
            raise RuntimeError(
                f"{type(backbone).__name__} does not pass keyword arguments on to its blocks, so "
                "lora_scope='audio' cannot reach them; use lora_scope='global'"
            )
