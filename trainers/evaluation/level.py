"""Does the emotion head hear the voice or the volume? Its accuracy on clips as recorded and with
every clip scaled to the same peak level: a head that leans on loudness loses accuracy on the second."""

from collections.abc import Sequence

import torch

from modeling_blsp_emo import BlspEmoForConditionalGeneration, BlspEmoProcessor, load_audio
from modeling_blsp_emo.speech_lengths import SAMPLING_RATE
from processing.augmentation import peak_normalize

NORMALIZED_PEAK_DBFS = -3.0


@torch.inference_mode()
def head_labels(
    model: BlspEmoForConditionalGeneration, processor: BlspEmoProcessor, clips: Sequence, batch_size: int = 8
) -> list[str]:
    """The emotion head's label for each 16-kHz clip (encoder, adapter and head only; no text)."""
    labels = model.config.emotion_labels
    predicted = []
    for start in range(0, len(clips), batch_size):
        batch = list(clips[start : start + batch_size])
        text = [processor.audio_token] * len(batch)
        inputs = processor(text=text, audio=batch, sampling_rate=SAMPLING_RATE, return_tensors="pt").to(model.device)
        logits = model.emotion_logits(inputs["input_features"], inputs["feature_attention_mask"], inputs["audio_item_index"])
        predicted += [labels[int(index)] for index in logits.argmax(-1)]
    return predicted


def head_accuracy_by_level(
    model: BlspEmoForConditionalGeneration,
    processor: BlspEmoProcessor,
    rows: Sequence[dict],
    batch_size: int = 8,
    peak_dbfs: float = NORMALIZED_PEAK_DBFS,
) -> dict:
    """`{"as_recorded", "peak_normalized", "clips"}`: head accuracy on `rows` (`audio`, `emotion`) as
    they are, and with each clip peak-normalized to `peak_dbfs`."""
    clips = [load_audio(row["audio"]) for row in rows]
    truth = [row["emotion"] for row in rows]

    def accuracy(predicted: list[str]) -> float:
        return sum(p == t for p, t in zip(predicted, truth)) / max(len(truth), 1)

    normalized = [peak_normalize(clip, peak_dbfs) for clip in clips]
    return {
        "as_recorded": accuracy(head_labels(model, processor, clips, batch_size)),
        "peak_normalized": accuracy(head_labels(model, processor, normalized, batch_size)),
        "clips": len(rows),
    }
