"""Scoring many texts that start alike with a causal LM: their common token prefix (chat template,
instruction, a shared reply) runs once, its keys and values serve every row, and the rest runs
right-padded. The callers put only the positions they need through the LM head."""

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


def hidden_after_shared_prefix(
    model, rows: Sequence[Sequence[int]], pad_id: int | None, limit: int | None = None
) -> tuple[torch.Tensor, int]:
    """The decoder's last hidden states `(len(rows), width, hidden)` at each row's tokens after the
    rows' common prefix (right-padded to the longest), and that prefix's length. `model` is a causal
    LM (its `base_model` is the decoder); `limit` caps the shared prefix (see `shared_prefix_length`)."""
    shared = shared_prefix_length(rows, limit)
    device = model.device
    decoder = model.base_model
    cache = None
    if shared:
        cache = decoder(input_ids=torch.tensor([list(rows[0][:shared])], device=device), use_cache=True).cache
        cache.batch_repeat_interleave(len(rows))
    rests = [list(row[shared:]) for row in rows]
    width = max(map(len, rests))
    pad = pad_id if pad_id is not None else 0  # masked: any id serves
    input_ids = torch.tensor([rest + [pad] * (width - len(rest)) for rest in rests], device=device)
    mask = torch.tensor([[1] * (shared + len(rest)) + [0] * (width - len(rest)) for rest in rests], device=device)
    output = decoder(input_ids=input_ids, attention_mask=mask, cache=cache, use_cache=cache is not None)
    return output.last_hidden_state, shared
