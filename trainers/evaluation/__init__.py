"""Measuring a model: speech emotion recognition (head, answers, retrieval), empathy judging, metrics, plots."""

from trainers.evaluation.empathy import evaluate_empathy, local_judge
from trainers.evaluation.retrieval import retrieval_targets, target_retrieval, writer_retrieval
from trainers.evaluation.ser import cascade_predictions, evaluate_ser, parse_emotion, predict_emotions, ser_metrics

__all__ = [
    "cascade_predictions", "evaluate_empathy", "evaluate_ser", "local_judge", "parse_emotion", "predict_emotions",
    "retrieval_targets", "ser_metrics", "target_retrieval", "writer_retrieval",
]
