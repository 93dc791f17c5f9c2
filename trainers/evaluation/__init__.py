"""Measuring a model: speech emotion recognition (head, answers, retrieval), the head's calibration,
empathy judging, metrics, plots."""

from trainers.evaluation.calibration import expected_calibration_error, fit_temperature
from trainers.evaluation.empathy import evaluate_empathy, local_judge
from trainers.evaluation.head_calibration import calibrate_checkpoint
from trainers.evaluation.retrieval import retrieval_targets, target_retrieval, writer_retrieval
from trainers.evaluation.ser import cascade_predictions, evaluate_ser, parse_emotion, predict_emotions, ser_metrics

__all__ = [
    "calibrate_checkpoint", "cascade_predictions", "evaluate_empathy", "evaluate_ser", "expected_calibration_error",
    "fit_temperature", "local_judge", "parse_emotion", "predict_emotions", "retrieval_targets", "ser_metrics",
    "target_retrieval", "writer_retrieval",
]
