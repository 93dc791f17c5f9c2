"""How replies are generated: repetition guards that look at the reply's own tokens only.

transformers applies `repetition_penalty` and `no_repeat_ngram_size` to the whole sequence, prompt
included: the system prompt, the instruction, earlier chat turns and the speech placeholders. The
original release penalised only generated tokens, and a reply may well quote the user's words. Here
both count the reply's tokens only (the model's `generate` applies them this way, whoever sets them).
"""

import torch
from transformers import LogitsProcessor, NoRepeatNGramLogitsProcessor, RepetitionPenaltyLogitsProcessor

from .numerics import NonFiniteOutputError

# Defaults of the audio-to-text pipeline and the chat (not of `generate`, nor of target writing):
# greedy replies of small LLMs otherwise loop ("I'm so sorry for ... I'm so sorry for ...").
# `repetition_penalty` 1.1 is the release's own setting; no 4-gram of tokens repeats within a reply.
REPLY_GENERATION_DEFAULTS = {"repetition_penalty": 1.1, "no_repeat_ngram_size": 4}


class ReplyNoRepeatNGramLogitsProcessor(NoRepeatNGramLogitsProcessor):
    """`NoRepeatNGramLogitsProcessor` over the tokens after the first `prompt_length` (the reply)."""

    def __init__(self, ngram_size: int, prompt_length: int):
        super().__init__(ngram_size)
        self.prompt_length = prompt_length

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        return super().__call__(input_ids[:, self.prompt_length :], scores)


def reply_logits_processors(
    prompt_length: int, repetition_penalty: float | None = None, no_repeat_ngram_size: int | None = None
) -> list[LogitsProcessor]:
    """Processors for `repetition_penalty` and `no_repeat_ngram_size` that count only the tokens after
    the `prompt_length` prompt tokens (all rows of a left-padded batch share that width)."""
    processors: list[LogitsProcessor] = []
    if repetition_penalty is not None and repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(float(repetition_penalty), prompt_ignore_length=prompt_length))
    if no_repeat_ngram_size:
        processors.append(ReplyNoRepeatNGramLogitsProcessor(int(no_repeat_ngram_size), prompt_length))
    return processors


class NonFiniteLogitsCheck(LogitsProcessor):
    """Notes NaN or +inf in the next-token scores without a device sync per step; call `raise_if_found`
    once after `generate`. (-inf is legitimate: suppressed tokens, banned n-grams.)"""

    def __init__(self):
        self.found: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        bad = (torch.isnan(scores) | torch.isposinf(scores)).any()
        self.found = bad if self.found is None else self.found | bad
        return scores

    def raise_if_found(self, what: str = "LM logits") -> None:
        if self.found is not None and bool(self.found):
            raise NonFiniteOutputError(
                f"{what}: NaN or +inf during generation; the checkpoint's weights are probably corrupt (re-download "
                "it) or the computation overflowed (try dtype float32)"
            )


__all__ = ["REPLY_GENERATION_DEFAULTS", "NonFiniteLogitsCheck", "ReplyNoRepeatNGramLogitsProcessor", "reply_logits_processors"]
