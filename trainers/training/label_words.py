"""An auxiliary stage-2 loss that asks the adapter to carry the emotion in the LLM's own terms.

When the emotion head reads the encoder's statistics (`emotion_pooling="encoder_stats"`), its loss no
longer reaches the adapter, and the adapter's outputs are all the LLM reads of the speech: nothing but
the continuations' cross-entropy asks them to carry the emotion. This loss classifies the masked mean of
each clip's speech embeddings by its cosine similarity to the LLM's input embedding of each label's
name, so the direction it asks for is one the LLM already reads as that emotion. It adds no weights:
the label names' embeddings come from the (frozen) LLM at each step.

`add_emotion_token` uses the same embeddings to start the model's emotion token (see
`BlspEmoConfig.emotion_token`): the LLM then reads the head's verdict as a mixture of the emotions' names.
"""

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from modeling_blsp_emo import BlspEmoForConditionalGeneration, BlspEmoProcessor
from modeling_blsp_emo.modeling_blsp_emo import pool_speech_embeddings

# Cosine similarities lie in [-1, 1]; scaled so that a clearly closest label gets most of the softmax.
LABEL_WORD_SCALE = 10.0


def label_word_ids(tokenizer: PreTrainedTokenizerBase, labels: list[str]) -> list[list[int]]:
    """The token ids of each label's name as it reads inside a sentence (with a leading space)."""
    ids = [tokenizer(f" {label}", add_special_tokens=False)["input_ids"] for label in labels]
    if any(not row for row in ids):
        raise ValueError(f"a label name gives no tokens with this tokenizer: {labels}")
    return ids


def label_word_embeddings(embeddings: nn.Embedding, ids: list[list[int]]) -> torch.Tensor:
    """`(labels, hidden)`: the mean input embedding of each label name's tokens, without gradient."""
    weight = embeddings.weight.detach()
    return torch.stack([weight[torch.tensor(row, device=weight.device)].float().mean(0) for row in ids])


def label_word_loss(
    audio_embeds: torch.Tensor,
    audio_lengths: torch.Tensor,
    label_embeddings: torch.Tensor,
    emotion_labels: torch.Tensor,
    audio_item_index: torch.Tensor | None = None,
) -> torch.Tensor:
    """Cross-entropy of the emotion labels against `LABEL_WORD_SCALE` × the cosine similarity between
    each audio item's mean speech embedding and each label name's embedding."""
    pooled = pool_speech_embeddings(audio_embeds, audio_lengths, audio_item_index).float()
    labels = label_embeddings.to(pooled.device)
    logits = LABEL_WORD_SCALE * nn.functional.cosine_similarity(pooled[:, None], labels[None], dim=-1)
    return nn.functional.cross_entropy(logits, emotion_labels.to(pooled.device))


def add_emotion_token(model: BlspEmoForConditionalGeneration, processor: BlspEmoProcessor) -> None:
    """Turn on the model's emotion token, its table started at the LLM's embeddings of the emotion
    names, and the processor's matching extra placeholder per window."""
    ids = label_word_ids(processor.tokenizer, model.config.emotion_labels)
    model.add_emotion_token(label_word_embeddings(model.get_input_embeddings(), ids))
    processor.emotion_token = True
