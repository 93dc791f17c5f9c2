"""The `audio-to-text` pipeline: speech (plus an optional instruction) in, the model's reply out."""

from typing import Any

from transformers import LogitsProcessorList

from .pipeline_base import DETECT_SPEECH, BlspEmoPipeline
from .prompts import ser_instruction
from .prompts import system_prompt as preset_system_prompt
from .reply_generation import REPLY_GENERATION_DEFAULTS, NonFiniteLogitsCheck
from .speech_lengths import SAMPLING_RATE

DEFAULT_MAX_NEW_TOKENS = 128


class AudioToTextPipeline(BlspEmoPipeline):
    """Answer spoken input with a BLSP-Emo model.

    ```python
    pipe = pipeline("audio-to-text", model="path/or/repo", trust_remote_code=True)
    pipe("question.wav", prompt="", empathetic=True)  # [{"generated_text": "..."}]
    pipe(["a.wav", "b.flac"], batch_size=2)           # [[{...}], [{...}]]
    pipe(array, sampling_rate=44100, return_emotion=True)  # adds "emotion", "scores", "ser_answer"
    for result in pipe(KeyDataset(dataset, "audio"), batch_size=8): ...  # streams, like any pipeline
    pipe(["a.wav", "missing.wav"], errors="return")   # [[{...}], [{"generated_text": None, "error": "..."}]]
    pipe("noise.wav", return_emotion=True)  # [{"generated_text": None, "emotion": None, ..., "no_speech": True}]
    pipe("noise.wav", detect_speech=False)  # answered as if it were speech
    ```

    Inputs: anything the processor's audio loader accepts (paths, bytes, arrays with
    `sampling_rate`, `datasets` audio values), a list, a generator or a dataset of them. Parameters:
    `prompt` (text said before the speech in the user turn), `system_prompt`, `empathetic` (use the
    empathetic system prompt), `return_emotion` (emotion head label and scores, calibrated by the
    config's `emotion_temperature`, plus the model's own answer to the speech-emotion query),
    `max_new_tokens`, `generate_kwargs`, `errors` ("raise": an unusable input stops the call with an
    error naming its index and source, as transformers does; "return": its result is
    `[{"generated_text": None, "error": message}]` and the others go on),
    `detect_speech` (default `DETECT_SPEECH`, on: input without speech, such as silence, noise, tones
    or music, found by a cheap pitch-and-energy check, `speech_activity.has_speech`, is not answered;
    its result is `[{"generated_text": None, "no_speech": True}]`, with `emotion`, `scores` and
    `ser_answer` None when `return_emotion`. False: everything is answered as speech).

    Replies are greedy with a guard against loops (`REPLY_GENERATION_DEFAULTS`: repetition penalty
    1.1 and no repeated 4-gram, both over the reply's own tokens); override them in `generate_kwargs`
    (e.g. `{"repetition_penalty": 1.0, "no_repeat_ngram_size": 0}` for plain greedy decoding).
    """

    _load_processor = True
    _load_tokenizer = False
    _load_feature_extractor = False
    _load_image_processor = False
    _load_video_processor = False

    def _sanitize_parameters(
        self,
        prompt: str | None = None,
        system_prompt: str | None = None,
        empathetic: bool | None = None,
        sampling_rate: int | None = None,
        return_emotion: bool | None = None,
        max_new_tokens: int | None = None,
        generate_kwargs: dict | None = None,
        errors: str | None = None,
        detect_speech: bool | None = None,
        **unknown,
    ):
        if unknown:
            raise TypeError(f"audio-to-text pipeline got unknown arguments: {sorted(unknown)}")
        if system_prompt is not None and empathetic is not None:
            raise ValueError("pass either system_prompt or empathetic, not both")
        self.check_errors_mode(errors)
        preprocess = {
            key: value
            for key, value in dict(
                prompt=prompt, system_prompt=system_prompt, empathetic=empathetic, sampling_rate=sampling_rate,
                return_emotion=return_emotion, errors=errors, detect_speech=detect_speech,
            ).items()
            if value is not None
        }  # fmt: skip
        forward = {}
        if generate_kwargs is not None or max_new_tokens is not None:
            forward["generate_kwargs"] = dict(generate_kwargs or {})
            if max_new_tokens is not None:
                forward["generate_kwargs"]["max_new_tokens"] = max_new_tokens
        postprocess = {}
        if return_emotion is not None:
            forward["return_emotion"] = postprocess["return_emotion"] = return_emotion
        return preprocess, forward, postprocess

    def preprocess(
        self,
        inputs: Any,
        prompt: str = "",
        system_prompt: str | None = None,
        empathetic: bool = False,
        sampling_rate: int | None = None,
        return_emotion: bool = False,
        errors: str = "raise",
        detect_speech: bool = DETECT_SPEECH,
    ) -> dict:
        """One input → its 16-kHz clip and the prompt text (with one audio placeholder)."""
        item = self.load_clip(inputs, sampling_rate, errors, detect_speech)
        if "clip" not in item:
            return item
        system = system_prompt if system_prompt is not None else preset_system_prompt(empathetic)
        if return_emotion:
            # The emotion query names the model's own labels.
            prompt = ser_instruction(self.model.config.emotion_labels)
        audio = {"type": "audio", "audio": item["clip"], "sampling_rate": SAMPLING_RATE}
        content = ([{"type": "text", "text": prompt}] if prompt else []) + [audio]
        conversation = [{"role": "system", "content": system}, {"role": "user", "content": content}]
        item["text"] = self.processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
        return item

    def collate(self, items: list[dict]) -> dict:
        """Preprocessed items → one left-padded model batch (all windows of every usable clip)."""
        skipped, clips = self.split_skipped(items)
        batch = {"skipped": skipped}
        if clips:
            texts = [item["text"] for item in items if "clip" in item]
            batch["model_inputs"] = dict(self.processor(text=texts, audio=clips, sampling_rate=SAMPLING_RATE))
        return batch

    def _forward(self, batch: dict, generate_kwargs: dict | None = None, return_emotion: bool = False) -> dict:
        outputs = {"skipped": batch["skipped"]}
        if "model_inputs" not in batch:
            return outputs
        model_inputs = batch["model_inputs"]
        kwargs = {**REPLY_GENERATION_DEFAULTS, "max_new_tokens": DEFAULT_MAX_NEW_TOKENS, **(generate_kwargs or {})}
        # Raw scores hold NaN/+inf only when the weights or the arithmetic are broken: checked once per call.
        finite = NonFiniteLogitsCheck()
        kwargs["logits_processor"] = LogitsProcessorList([*(kwargs.get("logits_processor") or []), finite])
        sequences = self.model.generate(**model_inputs, **kwargs)
        finite.raise_if_found("LM logits")
        outputs["generated_ids"] = sequences[:, model_inputs["input_ids"].shape[1] :]
        if return_emotion:
            logits = self.model.emotion_logits(
                model_inputs["input_features"], model_inputs["feature_attention_mask"], model_inputs["audio_item_index"]
            )
            outputs["emotion_probs"] = self.model.emotion_probabilities(logits)
        return outputs

    def postprocess(self, model_outputs: dict, return_emotion: bool = False) -> list[list[dict]]:
        """One result list per item of the batch."""
        texts = iter([])
        if "generated_ids" in model_outputs:
            texts = iter(self.processor.batch_decode(model_outputs["generated_ids"], skip_special_tokens=True))
        probs = iter(model_outputs["emotion_probs"].tolist()) if "emotion_probs" in model_outputs else None
        labels = self.model.config.emotion_labels
        results = []
        for skipped in model_outputs["skipped"]:
            if skipped is not None:
                withheld = dict(emotion=None, scores=None, ser_answer=None) if return_emotion and "no_speech" in skipped else {}
                results.append([{"generated_text": None, **withheld, **skipped}])
                continue
            result = {"generated_text": next(texts).strip()}
            if probs is not None:
                scores = dict(zip(labels, next(probs)))
                result.update(emotion=max(scores, key=scores.get), scores=scores, ser_answer=result["generated_text"])
            results.append([result])
        return results


__all__ = ["AudioToTextPipeline"]
