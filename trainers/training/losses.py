"""The tensors both training stages and the evaluation compute from: which positions predict the
response, the stage-1 KL, the stage-2 cross-entropy and per-token log-probabilities of a response.

Logits here are computed only at the predicting positions (`logits_to_keep=positions`), never over the
whole sequence: at a 150k-token vocabulary the full tensor would dominate memory. The training losses
go one step further: they take the LLM's final hidden states at those positions and compute the
logits a chunk of positions at a time (`chunked_distillation_kl`, `chunked_cross_entropy`), so that no
`(positions, vocabulary)` tensor exists for all positions at once.
"""

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn import functional as F

from processing.collators import IGNORE_INDEX

# Rows of a chunk whose teacher probabilities exist at once (a few MB at a 150k vocabulary).
SCRATCH_ROWS = 8


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


def distillation_kl(
    teacher_logits: torch.Tensor, student_logits: torch.Tensor, temperature: float, num_tokens: int | None = None
) -> torch.Tensor:
    """KL(teacher ‖ student) of the temperature-softened distributions, summed over rows (tokens) and
    divided by `num_tokens` (default: the number of rows, i.e. the mean); no T² factor, as in the release."""
    teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    num_tokens = teacher_logits.shape[0] if num_tokens is None else num_tokens
    return F.kl_div(student, teacher, log_target=True, reduction="sum") / max(num_tokens, 1)


def mean_response_log_probs(logits: torch.Tensor, labels: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Mean log-probability per labelled token of each row `(batch,)`. `logits` are those kept at
    `positions` (rows' predicting positions, in order), as from `logits_to_keep=positions`."""
    token_log_probs = F.log_softmax(logits.float(), -1).gather(-1, predicted_tokens(labels, positions)[:, None])[:, 0]
    rows = positions.nonzero()[:, 0]
    totals = torch.zeros(len(labels), device=logits.device).index_add(0, rows, token_log_probs)
    return totals / positions.sum(1)


@contextmanager
def lm_head_inputs(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Within the context the model's LM head computes nothing (its output has no rows); the hidden
    states it was given (those kept by `logits_to_keep`) are appended to the yielded list instead.

    A hook rather than a call into the model's inner modules, so that the forward still goes through
    whatever wraps the model (DDP, peft), and the chunked losses below then make the logits.
    """
    captured: list[torch.Tensor] = []

    def take_input(module: nn.Module, args: tuple) -> tuple:
        captured.append(args[0])
        return (args[0][..., :0, :],)

    handle = model.get_output_embeddings().register_forward_pre_hook(take_input)
    try:
        yield captured
    finally:
        handle.remove()


class _ChunkedHeadLoss(torch.autograd.Function):
    """`sum over chunks of chunk_loss(compute_logits(hidden[rows]), rows)` for row chunks of `hidden`.

    `chunk_loss(logits, rows, needs_grad)` returns the chunk's loss and, when `needs_grad`, its gradient
    with respect to the logits, computed analytically and in place in `logits`' memory (it owns that
    tensor): at a 150k vocabulary, every fresh `(chunk, vocabulary)` tensor costs more in page faults
    than the arithmetic on it. The gradient then goes through `compute_logits` (the LM head) to `hidden`
    during the forward; the backward merely scales it. No logits are kept for the backward and none are
    recomputed. The LM head must be frozen (checked by the callers), and `compute_logits` must not keep
    its own output for its backward (a linear head with scaling or soft-capping does not; autograd
    raises if one does).
    """

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, compute_logits: Callable, chunk_loss: Callable, chunk_size: int):
        needs_grad = ctx.needs_input_grad[0]
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad = torch.zeros_like(hidden) if needs_grad else None
        for start in range(0, hidden.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            with torch.set_grad_enabled(needs_grad):
                chunk = hidden[rows].detach().requires_grad_(needs_grad)
                logits = compute_logits(chunk)
            with torch.no_grad():
                loss, grad_logits = chunk_loss(logits.detach(), rows, needs_grad)
            if needs_grad:
                (grad[rows],) = torch.autograd.grad(logits, chunk, grad_logits)
            total += loss
        ctx.save_for_backward(grad)
        return total

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None, None


def frozen_head_logits(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model's `compute_logits` (LM head with its logit scaling), checked to be frozen when
    gradients are on: the chunked losses give gradients for the hidden states only."""
    if torch.is_grad_enabled() and any(parameter.requires_grad for parameter in model.get_output_embeddings().parameters()):
        raise ValueError(
            "the LM head is trainable, but the training losses give it no gradient; freeze it (BLSP-Emo trains "
            "the adapter, emotion head, encoder and LoRA, never the LM head)"
        )
    return model.compute_logits


def chunked_distillation_kl(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    compute_logits: Callable[[torch.Tensor], torch.Tensor],
    temperature: float,
    chunk_size: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`distillation_kl` of the logits of `(positions, hidden)` student and teacher hidden states, and
    the teacher-student argmax agreement, `chunk_size` positions at a time (`None`: all at once). Equals
    `distillation_kl` on all logits at once up to float rounding; its gradient with respect to the student
    logits, `(softmax(student / T) - softmax(teacher / T)) / (T * tokens)`, is formed in place."""
    agreements = []
    num_tokens = max(student_hidden.shape[0], 1)

    def chunk_kl(student: torch.Tensor, rows: slice, needs_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        teacher = compute_logits(teacher_hidden[rows]).float()
        student = student.float()
        agreements.append((teacher.argmax(-1) == student.argmax(-1)).sum())
        student_log_probs = torch.log_softmax(student.div_(temperature), -1, out=student)
        teacher_log_probs = torch.log_softmax(teacher.div_(temperature), -1, out=teacher)
        # Three values per logit are needed at once (p, log p - log q, q) but only two chunk-sized
        # buffers exist: the teacher probabilities go through a small scratch, a few rows at a time.
        scratch = teacher.new_empty(min(SCRATCH_ROWS, len(teacher)), teacher.shape[-1])
        kl = torch.zeros((), dtype=torch.float32, device=teacher.device)
        for start in range(0, len(teacher), SCRATCH_ROWS):
            block = slice(start, start + SCRATCH_ROWS)
            teacher_probs = torch.exp(teacher_log_probs[block], out=scratch[: len(teacher_log_probs[block])])
            log_ratio = teacher_log_probs[block].sub_(student_log_probs[block])
            kl += torch.dot(teacher_probs.view(-1), log_ratio.view(-1))
            if needs_grad:
                student_log_probs[block].exp_().sub_(teacher_probs)
        kl /= num_tokens
        return kl, student_log_probs.div_(temperature * num_tokens) if needs_grad else None

    kl = _ChunkedHeadLoss.apply(student_hidden, compute_logits, chunk_kl, chunk_size or num_tokens)
    agreement = torch.stack(agreements).sum() / num_tokens if agreements else kl.new_zeros(())
    return kl, agreement


def chunked_cross_entropy(
    hidden: torch.Tensor,
    targets: torch.Tensor,
    compute_logits: Callable[[torch.Tensor], torch.Tensor],
    chunk_size: int | None,
) -> torch.Tensor:
    """Mean cross-entropy of the logits of `(positions, hidden)` states against `targets` `(positions,)`
    (`IGNORE_INDEX` ignored), `chunk_size` positions at a time (`None`: all at once). Its gradient with
    respect to the logits, `(softmax - one_hot) / count` on the labelled rows, is formed in place."""
    count = max(int((targets != IGNORE_INDEX).sum()), 1)

    def chunk_ce(logits: torch.Tensor, rows: slice, needs_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        chunk_targets = targets[rows]
        labelled = chunk_targets != IGNORE_INDEX
        safe_targets = chunk_targets.masked_fill(~labelled, 0)[:, None]
        logits = logits.float()
        log_probs = torch.log_softmax(logits, -1, out=logits)
        target_log_probs = log_probs.gather(-1, safe_targets)[:, 0]
        loss = -(target_log_probs * labelled).sum() / count
        if not needs_grad:
            return loss, None
        grad = log_probs.exp_()
        grad.scatter_add_(-1, safe_targets, -labelled[:, None].to(grad.dtype))
        return loss, grad.mul_(labelled[:, None].to(grad.dtype) / count)

    return _ChunkedHeadLoss.apply(hidden, compute_logits, chunk_ce, chunk_size or max(hidden.shape[0], 1))
