"""Stage 2, emotion alignment: the model learns the LLM's emotion-aware continuations from speech
alone (cross-entropy) plus the emotion head's classification loss.

Trainable: adapter, emotion head (and the emotion token's table, when the model has one), Whisper
encoder (optional) and LoRA on the LLM, either masked to speech positions (`lora_scope="audio"`, the
release's choice, part of the model's own code) or ordinary peft LoRA (`"global"`, merged into the LLM
when saving).
"""

import re
from dataclasses import dataclass

from torch import nn

from modeling_blsp_emo import BlspEmoForConditionalGeneration
from trainers.training.base import AlignmentTrainer, set_trainable
from trainers.training.label_words import label_word_embeddings, label_word_loss
from trainers.training.losses import (
    chunked_cross_entropy,
    frozen_head_logits,
    lm_head_inputs,
    predicted_tokens,
    predicting_positions,
)

ADAPTER_AND_HEAD = ("model.adapter.", "emotion_head.", "emotion_token_embeddings.")
ENCODER = ("model.audio_encoder.",)


@dataclass
class LoraSettings:
    scope: str = "audio"  # "audio", "global" or "none"
    rank: int = 16
    alpha: int = 16
    dropout: float = 0.05
    target_modules: list[str] | None = None  # None: every linear layer of every LLM block


def llm_linear_layers(model: BlspEmoForConditionalGeneration, target_modules: list[str] | None) -> list[str]:
    """Full names of the LLM's linear layers that get LoRA."""
    return [
        f"model.language_model.{name}"
        for name, module in model.model.language_model.named_modules()
        if isinstance(module, nn.Linear) and (target_modules is None or name.rsplit(".", 1)[-1] in target_modules)
    ]


def prepare_for_emotion_alignment(
    model: BlspEmoForConditionalGeneration, lora: LoraSettings, train_encoder: bool = True
) -> nn.Module:
    """Add LoRA and set which weights train. Returns the model to train (a peft model for global LoRA)."""
    trained = ADAPTER_AND_HEAD + (ENCODER if train_encoder else ())
    if lora.scope == "audio":
        model.add_audio_lora(lora.rank, lora.alpha, lora.dropout, lora.target_modules)
        set_trainable(model, trained)
        for name, parameter in model.model.language_model.named_parameters():
            if ".lora_A." in name or ".lora_B." in name:
                parameter.requires_grad_(True)
        return model
    if lora.scope == "global":
        from peft import LoraConfig, get_peft_model

        layers = llm_linear_layers(model, lora.target_modules)
        config = LoraConfig(
            r=lora.rank, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
            target_modules="|".join(re.escape(name) for name in layers),
        )
        peft_model = get_peft_model(model, config)
        # peft freezes everything but LoRA; the adapter, head (and encoder) train too.
        for name, parameter in peft_model.base_model.model.named_parameters():
            if name.startswith(trained):
                parameter.requires_grad_(True)
        return peft_model
    if lora.scope == "none":
        set_trainable(model, trained)
        return model
    raise ValueError(f"lora scope {lora.scope!r}: expected 'audio', 'global' or 'none'")


def finalize(model: nn.Module) -> BlspEmoForConditionalGeneration:
    """The plain model to save: global LoRA merged into the LLM weights."""
    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
        model.config.lora_scope = "global"
    return model


class EmotionAlignmentTrainer(AlignmentTrainer):
    """`Trainer` for stage 2. Batches come from `SpeechContinuationCollator(label2id=...)`; the loss
    is `lm_loss + er_weight * emotion_loss`; logs both and the emotion head's accuracy.

    With `label_word_weight` > 0 (and `label_word_ids`, from `label_words.label_word_ids` in the order of
    the model's labels) the loss adds that weight × `label_word_loss`: the adapter's mean speech
    embedding of each clip should lie closest to the LLM's embedding of its emotion's name."""

    def __init__(
        self,
        *args,
        er_weight: float = 1.0,
        head_learning_rate: float | None = None,
        encoder_learning_rate: float | None = None,
        label_word_weight: float = 0.0,
        label_word_ids: list[list[int]] | None = None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        if label_word_weight and not label_word_ids:
            raise ValueError("label_word_weight needs label_word_ids (label_words.label_word_ids(tokenizer, labels))")
        self.er_weight = er_weight
        self.head_learning_rate = head_learning_rate
        self.encoder_learning_rate = encoder_learning_rate
        self.label_word_weight = label_word_weight
        self.label_word_ids = label_word_ids

    def create_optimizer(self, *args, **kwargs):
        """Optionally give the (small, freshly initialised) emotion head and the (pretrained, easily
        disturbed) Whisper encoder their own learning rates; everything else uses `args.learning_rate`."""
        own = {"emotion_head.": self.head_learning_rate, ENCODER[0]: self.encoder_learning_rate}
        own = {prefix: rate for prefix, rate in own.items() if rate is not None}
        if not own or self.optimizer is not None:
            return super().create_optimizer(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        groups = {prefix: [] for prefix in [*own, None]}
        for name, parameter in model.named_parameters():
            if parameter.requires_grad:
                # peft prefixes names with "base_model.model."
                prefix = next((p for p in own if f".{p}" in f".{name}"), None)
                groups[prefix].append(parameter)
        decay = self.args.weight_decay
        optimizer_class, optimizer_kwargs = self.get_optimizer_cls_and_kwargs(self.args, model)
        self.optimizer = optimizer_class(
            [{"params": groups[None], "weight_decay": decay}]
            + [{"params": groups[p], "lr": rate, "weight_decay": 0.0 if p == "emotion_head." else decay}
               for p, rate in own.items() if groups[p]],
            **optimizer_kwargs,
        )
        return self.optimizer

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        labels = inputs.pop("labels")
        positions = predicting_positions(labels)
        unwrapped = self.accelerator.unwrap_model(model)
        # The LM head only hands over its input; the loss makes the logits chunk by chunk.
        with lm_head_inputs(unwrapped) as hidden:
            outputs = model(**inputs, logits_to_keep=positions, use_cache=False)
        targets = predicted_tokens(labels, positions)
        lm_loss = chunked_cross_entropy(hidden[0], targets, frozen_head_logits(unwrapped), self.logits_chunk_rows(unwrapped))
        loss = lm_loss + self.er_weight * outputs.emotion_loss
        accuracy = (outputs.emotion_logits.argmax(-1) == inputs["emotion_labels"]).float().mean()
        self.record(lm_loss=lm_loss, emotion_loss=outputs.emotion_loss, emotion_accuracy=accuracy)
        if self.label_word_weight:
            names = label_word_embeddings(unwrapped.get_input_embeddings(), self.label_word_ids)
            word_loss = label_word_loss(
                outputs.audio_embeds, outputs.audio_lengths, names, inputs["emotion_labels"], inputs.get("audio_item_index")
            )
            loss = loss + self.label_word_weight * word_loss
            self.record(label_word_loss=word_loss)
        return (loss, outputs) if return_outputs else loss
