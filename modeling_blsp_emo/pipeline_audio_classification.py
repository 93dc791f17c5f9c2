"""The `audio-classification` pipeline of a BLSP-Emo checkpoint: speech emotion recognition with the
encoder, adapter and emotion head only (the LLM is neither loaded nor run)."""

from typing import Any

from .pipeline_base import DETECT_SPEECH, BlspEmoPipeline

DEFAULT_TOP_K = 5
_NOT_GIVEN = object()


class AudioClassificationPipeline(BlspEmoPipeline):
    """The emotion of speech, as transformers' `audio-classification` pipelines answer.

    ```python
    classify = pipeline("audio-classification", model="path/or/repo", trust_remote_code=True)
    classify("clip.wav")                        # [{"label": "sad", "score": 0.93}, ...] best first
    classify(array, sampling_rate=44100, top_k=1)
    classify(["a.wav", "b.wav"], batch_size=8)  # one list per input; generators and datasets stream
    ```

    The task is declared in the checkpoint's own config (`custom_pipelines`), never registered
    globally, so transformers' own `audio-classification` stays in place for other models. Inputs
    as for the `audio-to-text` pipeline; clips longer than 30 s are classified over all their
    windows. Scores are the emotion head's calibrated probabilities (`softmax(logits / T)`, T the
    config's `emotion_temperature`). `top_k` (default 5; None = all labels), `errors` ("raise" or
    "return": an unusable input's result is then `[{"label": None, "score": None, "error": message}]`).

    Input without speech (silence, noise, tones, music: a cheap pitch-and-energy check,
    `speech_activity.has_speech`) is not classified: its result is
    `[{"label": None, "score": None, "no_speech": True}]`. `detect_speech=False` turns the check off
    (default `DETECT_SPEECH`, on): every input is then classified.
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def _sanitize_parameters(
        self,
        top_k: Any = _NOT_GIVEN,
        sampling_rate: int | None = None,
        errors: str | None = None,
        detect_speech: bool | None = None,
        **unknown,
    ):
        if unknown:
            raise TypeError(f"audio-classification pipeline got unknown arguments: {sorted(unknown)}")
        self.check_errors_mode(errors)
        preprocess = dict(sampling_rate=sampling_rate, errors=errors, detect_speech=detect_speech)
        preprocess = {key: value for key, value in preprocess.items() if value is not None}
        postprocess = {} if top_k is _NOT_GIVEN else {"top_k": top_k}
        return preprocess, {}, postprocess

    def preprocess(
        self, inputs: Any, sampling_rate: int | None = None, errors: str = "raise", detect_speech: bool = DETECT_SPEECH
    ) -> dict:
        return self.load_clip(inputs, sampling_rate, errors, detect_speech)

    def collate(self, items: list[dict]) -> dict:
        """Features of every window of the usable clips, with each window's item index."""
        skipped, clips = self.split_skipped(items)
        batch = {"skipped": skipped}
        if clips:
            batch["model_inputs"] = self.processor.audio_features(clips)
        return batch

    def _forward(self, batch: dict) -> dict:
        outputs = {"skipped": batch["skipped"]}
        if "model_inputs" in batch:
            # The model raises on NaN/inf logits (corrupt weights), so no label comes from them.
            outputs["probs"] = self.model.emotion_probabilities(self.model(**batch["model_inputs"]).logits)
        return outputs

    def postprocess(self, model_outputs: dict, top_k: int | None = DEFAULT_TOP_K) -> list[list[dict]]:
        id2label = self.model.config.id2label
        top_k = len(id2label) if top_k is None else min(top_k, len(id2label))
        ranked = iter([])
        if "probs" in model_outputs:
            scores, ids = model_outputs["probs"].topk(top_k, dim=-1)
            ranked = zip(scores.tolist(), ids.tolist())
        results = []
        for skipped in model_outputs["skipped"]:
            if skipped is not None:
                results.append([{"label": None, "score": None, **skipped}])
                continue
            scores, ids = next(ranked)
            results.append([{"label": id2label[index], "score": score} for score, index in zip(scores, ids)])
        return results


__all__ = ["AudioClassificationPipeline"]
