"""Scoring many texts that start alike with a causal LM: their common token prefix (chat template,
instruction, a shared reply) runs once, its keys and values serve every row, the rest runs
right-padded, and logits are made only at the positions asked for (through the model's own forward,
so that any logit scaling or capping of the LLM applies)."""

from collections.abc import Sequence

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


def logits_after_shared_prefix(
    model,
    rows: Sequence[Sequence[int]],
    wanted: Sequence[Sequence[int]],
    pad_id: int | None,
    prefix_inputs: dict[str, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Per row `i`, the float logits `(len(wanted[i]), vocab)` at positions `wanted[i]` of token row
    `rows[i]` (a position's logits predict the token after it). The rows' common prefix up to the
    first wanted position runs once; `model` is a causal LM taking `cache` and `logits_to_keep`.
    `prefix_inputs` go with the prefix alone (e.g. the audio features of the speech it holds)."""
    shared = shared_prefix_length(rows, limit=min(min(positions) for positions in wanted))
    device = model.device
    if prefix_inputs and not shared:
        raise ValueError("the rows share no prefix to carry the prefix inputs (e.g. the speech)")
    cache = None
    if shared:
        prefix = torch.tensor([list(rows[0][:shared])], device=device)
        extra = {name: tensor.to(device) for name, tensor in (prefix_inputs or {}).items()}
        cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1, **extra).cache
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
