"""Qwen v1's tiktoken vocabulary (`qwen.tiktoken`) as a transformers Qwen2 tokenizer.

Qwen v1 and Qwen2 share the byte-level BPE vocabulary, the pre-tokenizer pattern (every digit is
its own piece) and the ids of `<|endoftext|>`, `<|im_start|>` and `<|im_end|>`, so a Qwen2 tokenizer
built from the tiktoken file tokenizes as Qwen v1 did. The file is read here (it is a list of
`base64(token) rank` lines), so the `tiktoken` package is not needed.
"""

import base64
from pathlib import Path

from tokenizers import AddedToken
from transformers import Qwen2Tokenizer
from transformers.convert_slow_tokenizer import TikTokenConverter

TIKTOKEN_FILE = "qwen.tiktoken"
ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
# Qwen v1's special tokens in id order, numbered from the end of the BPE vocabulary (151643).
SPECIAL_TOKENS = (ENDOFTEXT, IM_START, IM_END) + tuple(f"<|extra_{index}|>" for index in range(205))
# Qwen v1 ships no chat template; its chat format is ChatML.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def read_tiktoken_bpe(path: str | Path) -> dict[bytes, int]:
    """Token bytes → rank from a tiktoken BPE file; ranks must be 0…N−1 (special ids follow them)."""
    ranks = {}
    for line_number, line in enumerate(Path(path).read_bytes().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            token, rank = line.split()
            ranks[base64.b64decode(token, validate=True)] = int(rank)
        except ValueError as error:
            raise ValueError(f"{path}:{line_number}: expected 'base64-token rank', got {line[:60]!r}") from error
    if sorted(ranks.values()) != list(range(len(ranks))):
        raise ValueError(f"{path}: BPE ranks are not the contiguous ids 0…{len(ranks) - 1}")
    return ranks


class _TikTokenFileConverter(TikTokenConverter):
    """transformers' tiktoken → BPE converter, reading the file itself instead of through `tiktoken`."""

    load_tiktoken_bpe = staticmethod(read_tiktoken_bpe)


def qwen_v1_tokenizer(tiktoken_file: str | Path, extra_tokens: tuple[str, ...] = ()) -> Qwen2Tokenizer:
    """A Qwen2 tokenizer with Qwen v1's vocabulary and special-token ids, the ChatML chat template,
    `<|im_end|>` as end-of-turn (eos) and `<|endoftext|>` as padding. `extra_tokens` are added as
    special tokens after Qwen v1's own (e.g. an audio placeholder)."""
    converter = _TikTokenFileConverter(vocab_file=str(tiktoken_file))
    vocab, merges = converter.extract_vocab_merges_from_model(str(tiktoken_file))
    first_special_id = len(vocab)
    vocab.update({token: first_special_id + index for index, token in enumerate(SPECIAL_TOKENS)})
    tokenizer = Qwen2Tokenizer(
        vocab=vocab, merges=merges, unk_token=None, eos_token=IM_END, pad_token=ENDOFTEXT, model_max_length=8192
    )
    tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in SPECIAL_TOKENS], special_tokens=True)
    if extra_tokens:
        tokenizer.add_tokens([AddedToken(token, special=True, normalized=False) for token in extra_tokens], special_tokens=True)
    tokenizer.chat_template = CHATML_TEMPLATE
    ids = tokenizer.convert_tokens_to_ids(list(SPECIAL_TOKENS))
    if ids != list(range(first_special_id, first_special_id + len(SPECIAL_TOKENS))):
        raise RuntimeError(f"{tiktoken_file}: Qwen v1 special tokens got ids {ids[:3]}…, expected from {first_special_id}")
    return tokenizer


__all__ = ["CHATML_TEMPLATE", "SPECIAL_TOKENS", "TIKTOKEN_FILE", "qwen_v1_tokenizer", "read_tiktoken_bpe"]
