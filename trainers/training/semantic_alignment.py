"""Stage 1, semantic alignment: the speech model learns to predict what the frozen LLM predicts
from the transcript (KL at temperature T over the response tokens); only the adapter trains."""

import torch

from trainers.training.base import AlignmentTrainer, set_trainable
from trainers.training.losses import chunked_distillation_kl, frozen_head_logits, lm_head_inputs, predicting_positions

TRAINED_PREFIXES = ("model.adapter.",)


class SemanticAlignmentTrainer(AlignmentTrainer):
    """`Trainer` for stage 1. Batches come from `SpeechContinuationCollator(with_teacher=True)`;
    logs `kl` and `token_agreement` (teacher argmax == student argmax)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        set_trainable(self.model, TRAINED_PREFIXES)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """The KL at the positions predicting the response. The LM head only hands over its input
        there; the logits are made chunk by chunk in the loss (`outputs.logits` is empty)."""
        teacher = {key.removeprefix("teacher_"): inputs.pop(key) for key in list(inputs) if key.startswith("teacher_")}
        student_positions = predicting_positions(inputs.pop("labels"))
        teacher_positions = predicting_positions(teacher.pop("labels"))
        unwrapped = self.accelerator.unwrap_model(model)
        with torch.no_grad(), lm_head_inputs(unwrapped) as teacher_hidden:
            model(**teacher, logits_to_keep=teacher_positions, use_cache=False)
        with lm_head_inputs(unwrapped) as student_hidden:
            outputs = model(**inputs, logits_to_keep=student_positions, use_cache=False)
        loss, agreement = chunked_distillation_kl(
            student_hidden[0], teacher_hidden[0], frozen_head_logits(unwrapped), unwrapped.config.kd_temperature,
            self.logits_chunk_rows(unwrapped),
        )
        self.record(kl=loss, token_agreement=agreement)
        return (loss, outputs) if return_outputs else loss
