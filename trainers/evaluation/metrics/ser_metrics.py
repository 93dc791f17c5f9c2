"""Speech-emotion-recognition metrics as a local `evaluate` module (Hub metrics cannot load offline).

    metric = evaluate.load("path/to/trainers/evaluation/metrics/ser_metrics.py")
    metric.compute(predictions=[0, 2, 1], references=[0, 1, 1], num_labels=5)

Returns accuracy, unweighted accuracy (mean per-class recall, "UA"), weighted accuracy (recall of
each class weighted by its frequency: equal to accuracy, reported under the name SER papers use),
macro-F1 and the confusion matrix (rows = reference, columns = prediction). Predictions of -1
(unparseable answers) count as wrong.
"""

import datasets
import evaluate
import numpy as np


class SerMetrics(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Accuracy, unweighted accuracy, weighted accuracy, macro-F1 and confusion matrix for SER.",
            citation="",
            inputs_description="predictions and references: class ids (prediction -1 = no answer); num_labels: int",
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, num_labels: int | None = None) -> dict:
        predictions, references = np.asarray(predictions, dtype=int), np.asarray(references, dtype=int)
        if num_labels is None:
            num_labels = int(max(predictions.max(initial=-1), references.max(initial=-1))) + 1
        confusion = np.zeros((num_labels, num_labels + 1), dtype=int)  # last column: no answer
        np.add.at(confusion, (references, np.where(predictions < 0, num_labels, predictions)), 1)
        support = confusion.sum(1)
        correct = np.diag(confusion[:, :num_labels])
        predicted = confusion[:, :num_labels].sum(0)
        present = support > 0
        recall = np.divide(correct, support, out=np.zeros(num_labels), where=present)
        precision = np.divide(correct, predicted, out=np.zeros(num_labels), where=predicted > 0)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros(num_labels), where=precision + recall > 0)
        total = max(int(support.sum()), 1)
        return {
            "accuracy": float(correct.sum() / total),
            "unweighted_accuracy": float(recall[present].mean()) if present.any() else 0.0,
            "weighted_accuracy": float((recall * support).sum() / total),
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "unanswered": int(confusion[:, num_labels].sum()),
            "confusion_matrix": confusion[:, :num_labels].tolist(),
        }
