"""Stage 1, semantic alignment: the speech model learns to predict what the frozen LLM predicts
from the transcript (KL at temperature T over the response tokens); only the adapter trains."""

import torch

from trainers.training.base import AlignmentTrainer, set_trainable
from trainers.training.losses import distillation_kl, predicting_positions

TRAINED_PREFIXES = ("model.adapter.",)


class SemanticAlignmentTrainer(AlignmentTrainer):
    """`Trainer` for stage 1. Batches come from `SpeechContinuationCollator(with_teacher=True)`;
    logs `kl` and `token_agreement` (teacher argmax == student argmax)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        set_trainable(self.model, TRAINED_PREFIXES)

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        teacher = {key.removeprefix("teacher_"): inputs.pop(key) for key in list(inputs) if key.startswith("teacher_")}
        student_positions = predicting_positions(inputs.pop("labels"))
        teacher_positions = predicting_positions(teacher.pop("labels"))
        with torch.no_grad():
            teacher_logits = model(**teacher, logits_to_keep=teacher_positions, use_cache=False).logits
        outputs = model(**inputs, logits_to_keep=student_positions, use_cache=False)
        temperature = self.accelerator.unwrap_model(model).config.kd_temperature
        loss = distillation_kl(teacher_logits, outputs.logits, temperature)
        agreement = (teacher_logits.argmax(-1) == outputs.logits.argmax(-1)).float().mean()
        self.record(kl=loss, token_agreement=agreement)
        return (loss, outputs) if return_outputs else loss
