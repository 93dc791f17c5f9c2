"""Stage 1, semantic alignment: the speech model learns to predict what the frozen LLM predicts
from the transcript (KL at temperature T over the response tokens); only the adapter trains."""

import torch
from torch.nn import functional as F

from processing.collators import IGNORE_INDEX

from .base import AlignmentTrainer, set_trainable

TRAINED_PREFIXES = ("model.adapter.",)


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose *next* token is a labelled response token `(batch, seq)`.

    This is the release's comparison shifted by one: it includes the position that predicts the
    first response token and excludes the one after the last.
    """
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return positions


def distillation_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of the temperature-softened distributions, averaged over rows
    (tokens); no T² factor, as in the release."""
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="sum") / max(teacher_logits.shape[0], 1)


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
