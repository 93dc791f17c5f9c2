"""Calibrating a checkpoint's emotion head: its raw logits on labelled clips (the head path of
`ser.predict_emotions`), a temperature fitted to them (`calibration.fit_temperature`), and the
checkpoint's config updated with it (`emotion_temperature`), so that every score the model gives
from then on (pipelines, chat, evaluation) is calibrated."""

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from modeling_blsp_emo import BlspEmoForAudioClassification, BlspEmoForConditionalGeneration, BlspEmoProcessor
from processing.emotion_labels import check_labelled_rows
from trainers.checkpoints.editing import set_config_fields
from trainers.checkpoints.loading import load_blsp_emo
from trainers.evaluation.calibration import expected_calibration_error, fit_temperature, temperature_scaled
from trainers.evaluation.ser import predict_emotions, readable_indices


def head_logits(
    model: BlspEmoForConditionalGeneration | BlspEmoForAudioClassification,
    processor: BlspEmoProcessor,
    rows: Sequence[dict],
    batch_size: int = 8,
) -> tuple[np.ndarray, np.ndarray]:
    """The emotion head's raw logits `(clips, labels)` on `rows` (`audio`, `emotion`) and the rows'
    label ids. Clips that cannot be loaded are left out with a logged count (an `AudioInputError`
    when none can); an emotion the model does not know is a `UserInputError`."""
    labels = model.config.emotion_labels
    check_labelled_rows(rows, labels, "calibrate on")
    predictions = predict_emotions(model, processor, [row["audio"] for row in rows], batch_size, errors="return", answers=False)
    kept = readable_indices(predictions, "calibration")
    logits = np.array([predictions[index]["head_logits"] for index in kept], dtype=np.float64)
    return logits, np.array([labels.index(rows[index]["emotion"]) for index in kept])


def calibration_errors(logits: np.ndarray, label_ids: np.ndarray, before: float, after: float) -> dict:
    """`{"ece_before", "ece_after", "clips"}`: the ECE of the head's scores at temperature `before` and `after`."""
    return {
        "ece_before": expected_calibration_error(temperature_scaled(logits, before), label_ids),
        "ece_after": expected_calibration_error(temperature_scaled(logits, after), label_ids),
        "clips": len(label_ids),
    }


def calibrate_checkpoint(
    checkpoint_dir: str | Path,
    rows: Sequence[dict],
    batch_size: int = 8,
    *,
    output: str | Path | None = None,
    held_out_rows: Sequence[dict] | None = None,
) -> dict:
    """Fit the emotion head's temperature of the local checkpoint `checkpoint_dir` on `rows`
    (`audio`, `emotion`: a validation split) and store it in its config.json (or in a copy written to
    `output`; `checksums.json`, when present, is updated).

    Returns `{"temperature", "ece_before", "ece_after", "clips"}`: the fitted temperature and the
    expected calibration error on `rows` with the checkpoint's temperature before (1.0 unless it was
    calibrated already) and after. With `held_out_rows` (a test split), `"held_out"` holds the same
    `{"ece_before", "ece_after", "clips"}` on them, the fair measure of the fit."""
    model, processor = load_blsp_emo(str(checkpoint_dir), model_class=BlspEmoForAudioClassification)  # no LLM needed
    model.eval()
    before = model.config.emotion_temperature
    logits, label_ids = head_logits(model, processor, rows, batch_size)
    temperature = fit_temperature(logits, label_ids)
    result = {"temperature": temperature, **calibration_errors(logits, label_ids, before, temperature)}
    if held_out_rows is not None:
        result["held_out"] = calibration_errors(*head_logits(model, processor, held_out_rows, batch_size), before, temperature)
    set_config_fields(checkpoint_dir, {"emotion_temperature": temperature}, output)
    return result


__all__ = ["calibrate_checkpoint", "calibration_errors", "head_logits"]
