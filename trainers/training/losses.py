"""The tensors both training stages and the evaluation compute from: which positions predict the
response, the stage-1 KL, the stage-2 cross-entropy and per-token log-probabilities of a response.

Logits here are computed only at the predicting positions (`logits_to_keep=positions`), never over the
whole sequence: at a 150k-token vocabulary the full tensor would dominate memory.
"""

import torch
from torch.nn import functional as F

from processing.collators import IGNORE_INDEX


def predicting_positions(labels: torch.Tensor) -> torch.Tensor:
    """Positions whose *next* token is a labelled response token `(batch, seq)`.

    This is the release's comparison shifted by one: it includes the position that predicts the
    first response token and excludes the one after the last.
    """
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return positions


def predicted_tokens(labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """The response tokens that the logits at `positions` predict, flattened in the same order."""
    return labels[:, 1:][positions[:, :-1]]


def distillation_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(teacher ‖ student) of the temperature-softened distributions, averaged over rows
    (tokens); no T² factor, as in the release."""
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return F.kl_div(student, teacher, log_target=True, reduction="sum") / max(teacher_logits.shape[0], 1)


def response_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy where `logits` were computed only at `positions`."""
    return F.cross_entropy(logits.float(), predicted_tokens(labels, positions), ignore_index=IGNORE_INDEX)


def mean_response_log_probs(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Mean log-probability per labelled token of each row `(batch,)`. `logits` are those kept at
    `positions` (rows' predicting positions, in order), as from `logits_to_keep=positions`."""
    token_log_probs = F.log_softmax(logits.float(), -1).gather(-1, predicted_tokens(labels, positions)[:, None])[:, 0]
    rows = positions.nonzero()[:, 0]
    totals = torch.zeros(len(labels), device=logits.device).index_add(0, rows, token_log_probs)
    return totals / positions.sum(1)
