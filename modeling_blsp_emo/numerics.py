"""Model outputs must be finite before they become a label, a score or a metric.

argmax over NaN picks the first label and softmax of +inf gives NaN scores, so corrupt weights (or an
overflow in half precision) would otherwise pass as confident, wrong answers. Raw logits and the
emotion head's logits are checked; processed generation scores are not (they hold -inf for
suppressed tokens by design).
"""

import torch


class NonFiniteOutputError(ValueError):
    """A model output holds NaN or infinite values; the message names the output and the likely causes."""


def check_finite(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """Return `tensor` unchanged when every value is finite; otherwise raise `NonFiniteOutputError`
    naming `what` (e.g. "emotion head logits") and how many values are NaN / infinite.

    One device synchronisation per call: check a whole batch (or stacked steps) at once.
    """
    if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
        nan = int(torch.isnan(tensor).sum())
        inf = int(torch.isinf(tensor).sum())
        raise NonFiniteOutputError(
            f"{what}: {nan} NaN and {inf} infinite value(s) among {tensor.numel()} ({tensor.dtype}); the "
            "checkpoint's weights are probably corrupt (re-download it, or check it with "
            "`blsp-emo verify-checksums`) or the computation overflowed (try dtype float32)"
        )
    return tensor
