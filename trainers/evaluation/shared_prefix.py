"""Scoring many texts that start alike with a causal LM: their common token prefix (chat template,
instruction, a shared reply) runs once, its keys and values serve every row, the rest runs
right-padded, and logits are made only at the positions asked for (through the model's own forward,
so that any logit scaling or capping of the LLM applies)."""

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


def shared_prefix_length(rows: Sequence[Sequence[int]], limit: int | None = None) -> int:
    """Length of the token prefix common to all rows, leaving each row at least one token of its own
    (and at most `limit`)."""
    length = min(map(len, rows)) - 1
    if limit is not None:
        length = min(length, limit)
    length = max(length, 0)
    for position in range(length):
        if any(row[position] != rows[0][position] for row in rows[1:]):
            return position
    return length


@dataclass
class PrefixCache:
    """The keys and values of `tokens` (one row), computed once and reused by many calls of
    `logits_after_shared_prefix` whose rows all start with `tokens` (an instruction common to a whole
    set of questions)."""

    tokens: list[int]
    cache: Any


def _extend_cache(model, tokens: Sequence[int], cache=None, **inputs):
    """The keys and values after running one row of `tokens` through `model`, after `cache` if given."""
    prefix = torch.tensor([list(tokens)], device=model.device)
    extra = {name: tensor.to(model.device) for name, tensor in inputs.items()}
    return model(input_ids=prefix, cache=cache, use_cache=True, logits_to_keep=1, **extra).cache


@torch.inference_mode()
def run_prefix(model, tokens: Sequence[int]) -> PrefixCache:
    """Run `tokens` through the causal LM `model` once and keep their keys and values."""
    return PrefixCache(list(tokens), _extend_cache(model, tokens))


def logits_after_shared_prefix(
    model,
    rows: Sequence[Sequence[int]],
    wanted: Sequence[Sequence[int]],
    pad_id: int | None,
    prefix_inputs: dict[str, torch.Tensor] | None = None,
    prefix_cache: PrefixCache | None = None,
) -> list[torch.Tensor]:
    """Per row `i`, the float logits `(len(wanted[i]), vocab)` at positions `wanted[i]` of token row
    `rows[i]` (a position's logits predict the token after it). The rows' common prefix up to the
    first wanted position runs once; `model` is a causal LM taking `cache` and `logits_to_keep`.
    `prefix_inputs` go with the prefix alone (e.g. the audio features of the speech it holds);
    `prefix_cache` holds a start of that prefix already computed (`run_prefix`), which every row must
    begin with."""
    shared = shared_prefix_length(rows, limit=min(min(positions) for positions in wanted))
    device = model.device
    cached = len(prefix_cache.tokens) if prefix_cache is not None else 0
    if prefix_inputs and shared <= cached:
        raise ValueError("the rows share no prefix (beyond a cached one) to carry the prefix inputs (e.g. the speech)")
    cache = None
    if prefix_cache is not None:
        if shared < cached or list(rows[0][:cached]) != prefix_cache.tokens:
            raise ValueError(f"the rows do not all begin with the {cached} cached prefix tokens")
        cache = copy.deepcopy(prefix_cache.cache)  # extended below: the cached prefix serves other calls too
    if shared > cached:
        cache = _extend_cache(model, rows[0][cached:shared], cache, **(prefix_inputs or {}))
    if cache is not None:
        cache.batch_repeat_interleave(len(rows))
    rests = [list(row[shared:]) for row in rows]
    width = max(map(len, rests))
    pad = pad_id if pad_id is not None else 0  # masked: any id serves
    input_ids = torch.tensor([rest + [pad] * (width - len(rest)) for rest in rests], device=device)
    mask = torch.tensor([[1] * (shared + len(rest)) + [0] * (width - len(rest)) for rest in rests], device=device)
    keep = sorted({position - shared for positions in wanted for position in positions})
    logits = model(
        input_ids=input_ids, attention_mask=mask, cache=cache, use_cache=cache is not None,
        logits_to_keep=torch.tensor(keep, device=device),
    ).logits  # fmt: skip
    column = {position: index for index, position in enumerate(keep)}
    return [
        logits[row, [column[position - shared] for position in positions]].float()
        for row, positions in enumerate(wanted)
    ]
