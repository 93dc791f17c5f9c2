"""Are the emotion head's scores honest? The expected calibration error of its top label, and the
one-number fix: a softmax temperature fitted on labelled clips (Guo et al., 2017, "On Calibration of
Modern Neural Networks").

A head trained with cross-entropy on a small corpus is often overconfident: "angry, 0.97" on a
clip it gets right 60 % of the time. Dividing the logits by a temperature T > 1 softens every
score and changes no label, so the fit can only improve calibration, never accuracy.
"""

import logging
import math

import numpy as np
import torch

logger = logging.getLogger(__name__)

# The search range of the temperature: wide enough for any head, bounded so that a split the head
# gets entirely right (where the likelihood keeps rising as T -> 0) still gives a number.
TEMPERATURE_BOUNDS = (0.01, 100.0)
_GOLDEN = (math.sqrt(5) - 1) / 2


def _labels_for(rows: int, labels, classes: int) -> np.ndarray:
    """`labels` as class ids, checked against `rows` examples of `classes` classes."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != rows:
        raise ValueError(f"labels: expected {rows} class ids (one per row), got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected integer class ids, got dtype {labels.dtype}")
    if len(labels) and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"labels: class ids must be in 0..{classes - 1}, got {labels.min()}..{labels.max()}")
    return labels


def _matrix(values, name: str) -> np.ndarray:
    """`values` as a finite float64 (examples, classes) matrix with at least one row and two classes."""
    matrix = np.asarray(values.detach().cpu() if isinstance(values, torch.Tensor) else values, dtype=np.float64)
    if matrix.ndim != 2 or matrix.shape[0] == 0 or matrix.shape[1] < 2:
        raise ValueError(f"{name}: expected a non-empty (examples, classes) matrix with 2 or more classes, got shape {matrix.shape}")
    if not np.isfinite(matrix).all():
        raise ValueError(f"{name}: {int((~np.isfinite(matrix)).sum())} NaN or infinite value(s)")
    return matrix


def expected_calibration_error(probabilities, labels, bins: int = 10) -> float:
    """Expected calibration error (0 = calibrated, up to 1) of the top label's confidence.

    `probabilities` `(examples, classes)`: scores that sum to 1 per row (array, tensor or lists);
    `labels` `(examples,)`: the true class ids. Each example's confidence (its highest score) falls
    into one of `bins` equal-width bins, (0, 1/bins], ..., ((bins-1)/bins, 1]; the ECE is the mean
    over bins, weighted by their share of the examples, of |accuracy − mean confidence| in the bin.
    """
    probabilities = _matrix(probabilities, "probabilities")
    labels = _labels_for(len(probabilities), labels, probabilities.shape[1])
    if bins < 1:
        raise ValueError(f"bins={bins}: expected 1 or more")
    if probabilities.min() < 0 or probabilities.max() > 1:
        raise ValueError("probabilities: values must lie in [0, 1] (pass softmax scores, not logits)")
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == labels
    bin_of = np.clip(np.ceil(confidence * bins).astype(int) - 1, 0, bins - 1)
    error = 0.0
    for index in np.unique(bin_of):
        members = bin_of == index
        error += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(error)


def _mean_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    return float(torch.nn.functional.cross_entropy(logits / temperature, labels))


def fit_temperature(logits, labels, tolerance: float = 1e-6) -> float:
    """The temperature T minimising the mean negative log-likelihood of `softmax(logits / T)`.

    `logits` `(examples, classes)` raw scores (array, tensor or lists), `labels` `(examples,)` class
    ids. The likelihood is unimodal in log T (convex in 1/T), so a golden-section search over
    log T in `TEMPERATURE_BOUNDS` finds it to `tolerance`; a result at a bound is logged.
    """
    matrix = _matrix(logits, "logits")
    labels = torch.from_numpy(_labels_for(len(matrix), labels, matrix.shape[1]).astype(np.int64))
    logits = torch.from_numpy(matrix)
    low, high = (math.log(bound) for bound in TEMPERATURE_BOUNDS)
    inner_low, inner_high = high - _GOLDEN * (high - low), low + _GOLDEN * (high - low)
    nll_low, nll_high = (_mean_nll(logits, labels, math.exp(x)) for x in (inner_low, inner_high))
    while high - low > tolerance:
        if nll_low <= nll_high:
            high, inner_high, nll_high = inner_high, inner_low, nll_low
            inner_low = high - _GOLDEN * (high - low)
            nll_low = _mean_nll(logits, labels, math.exp(inner_low))
        else:
            low, inner_low, nll_low = inner_low, inner_high, nll_high
            inner_high = low + _GOLDEN * (high - low)
            nll_high = _mean_nll(logits, labels, math.exp(inner_high))
    temperature = math.exp((low + high) / 2)
    if min(abs(temperature - bound) / bound for bound in TEMPERATURE_BOUNDS) < 1e-3:
        logger.warning("fitted temperature %.4g is at the edge of the search range %s", temperature, TEMPERATURE_BOUNDS)
    return temperature


def temperature_scaled(logits, temperature: float) -> np.ndarray:
    """`softmax(logits / temperature)` as a float64 array (what `emotion_probabilities` computes)."""
    return torch.from_numpy(_matrix(logits, "logits") / temperature).softmax(-1).numpy()


__all__ = ["TEMPERATURE_BOUNDS", "expected_calibration_error", "fit_temperature", "temperature_scaled"]
