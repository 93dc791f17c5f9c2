"""Linear probing before fine-tuning: the emotion head fitted alone on the frozen model's pooled speech
embeddings, before stage 2 trains it together with the encoder, adapter and LoRA.

A freshly initialised head learns slowly beside the other losses (the demo's stage 2 sees each clip
about once), and while it is still random its gradient pushes the encoder in random directions.
Starting fine-tuning from a fitted linear probe avoids both (LP-FT, Kumar et al. 2022). The fit is a
convex problem on features computed once: a few seconds on CPU.
"""

import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.nn import functional as F
from tqdm.auto import tqdm

from modeling_blsp_emo import BlspEmoForConditionalGeneration, BlspEmoProcessor, load_audio
from modeling_blsp_emo.numerics import check_finite
from processing.emotion_labels import check_labelled_rows

logger = logging.getLogger(__name__)


@torch.no_grad()  # not inference_mode: the features are fitted on with autograd afterwards
def pooled_speech_embeddings(
    model: BlspEmoForConditionalGeneration, processor: BlspEmoProcessor, clips: Sequence[np.ndarray], batch_size: int = 8
) -> torch.Tensor:
    """What the emotion head reads for each clip `(clips, head input size)`, float32, pooled as
    `model.config.emotion_pooling` says: the masked mean of the speech embeddings (`"adapter_mean"`) or
    the encoder's pooled statistics (`"encoder_stats"`)."""
    encoder_stats = model.config.emotion_pooling == "encoder_stats"
    what = "pooled encoder statistics" if encoder_stats else "pooled speech embeddings"
    pooled = []
    for start in tqdm(range(0, len(clips), batch_size), desc="speech embeddings", unit="batch", disable=len(clips) <= batch_size):
        inputs = {name: value.to(model.device) for name, value in processor.audio_features(clips[start : start + batch_size]).items()}
        states, lengths = model.model.get_emotion_head_states(inputs["input_features"].to(model.dtype), inputs["feature_attention_mask"])
        head_input = model.pool_for_emotion_head(states, lengths, inputs["audio_item_index"])
        pooled.append(check_finite(head_input.float(), what))
    return torch.cat(pooled)


def fit_linear_head(
    features: torch.Tensor, label_ids: torch.Tensor, num_labels: int, l2: float = 1e-3, max_iter: int = 200
) -> torch.Tensor:
    """Weights `(labels, hidden)` of a bias-free linear classifier minimising the mean cross-entropy
    plus `l2` times the squared weights, by L-BFGS (the problem is convex)."""
    weight = torch.zeros(num_labels, features.shape[1], dtype=torch.float32, requires_grad=True)
    optimizer = torch.optim.LBFGS([weight], max_iter=max_iter, line_search_fn="strong_wolfe")

    def objective() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(features @ weight.T, label_ids) + l2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(objective)
    return weight.detach()


def warm_start_emotion_head(
    model: BlspEmoForConditionalGeneration,
    processor: BlspEmoProcessor,
    rows: Sequence[dict],
    augment: Callable[[np.ndarray], np.ndarray] | None = None,
    copies: int = 1,
    batch_size: int = 8,
    l2: float = 1e-3,
) -> dict:
    """Fit `model.emotion_head` on `rows` (`audio`, `emotion`) with everything else frozen and return
    `{"clips", "train_accuracy"}`. With `augment`, each clip is seen as `copies` augmented copies (e.g.
    at random levels, so the head cannot lean on loudness)."""
    labels = model.config.emotion_labels
    check_labelled_rows(rows, labels, "fit the emotion head on")
    clips = [load_audio(row["audio"]) for row in rows]  # errors name the file
    if augment is not None:
        clips = [augment(clip) for _ in range(copies) for clip in clips]
    label_ids = torch.tensor([labels.index(row["emotion"]) for row in rows] * (len(clips) // len(rows)))
    training = model.training
    model.eval()
    try:
        features = pooled_speech_embeddings(model, processor, clips, batch_size)
    finally:
        model.train(training)
    weight = fit_linear_head(features, label_ids, len(labels), l2)
    head = model.emotion_head.weight
    with torch.no_grad():
        head.copy_(weight.to(head.device, head.dtype))
    accuracy = float(((features @ weight.T).argmax(-1) == label_ids).float().mean())
    logger.info("emotion head fitted on %d clips: training accuracy %.1f %%", len(clips), 100 * accuracy)
    return {"clips": len(clips), "train_accuracy": accuracy}
