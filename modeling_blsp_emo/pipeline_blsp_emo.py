"""The `audio-to-text` pipeline: speech (plus an optional instruction) in, the model's reply out."""

from typing import Any

import torch
from transformers import Pipeline

from .prompts import ser_instruction
from .prompts import system_prompt as preset_system_prompt

DEFAULT_MAX_NEW_TOKENS = 128


class AudioToTextPipeline(Pipeline):
    """Answer spoken input with a BLSP-Emo model.

    ```python
    pipe = pipeline("audio-to-text", model="path/or/repo", trust_remote_code=True)
    pipe("question.wav", prompt="", empathetic=True)  # [{"generated_text": "..."}]
    pipe(["a.wav", "b.flac"], batch_size=2)           # [[{...}], [{...}]]
    pipe(array, sampling_rate=44100, return_emotion=True)  # adds "emotion", "scores", "ser_answer"
    ```

    Inputs: anything the processor's audio loader accepts (paths, bytes, arrays with
    `sampling_rate`, `datasets` audio values), or a list of them. Parameters: `prompt` (text said
    before the speech in the user turn), `system_prompt`, `empathetic` (use the empathetic system
    prompt), `return_emotion` (emotion head label and scores, plus the model's own answer to the
    speech-emotion query), `max_new_tokens`, `generate_kwargs`.
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
        **unknown,
    ):
        if unknown:
            raise TypeError(f"audio-to-text pipeline got unknown arguments: {sorted(unknown)}")
        if system_prompt is not None and empathetic is not None:
            raise ValueError("pass either system_prompt or empathetic, not both")
        preprocess = {
            key: value
            for key, value in dict(
                prompt=prompt, system_prompt=system_prompt, empathetic=empathetic, sampling_rate=sampling_rate
            ).items()
            if value is not None
        }
        forward = {"generate_kwargs": dict(generate_kwargs or {})}
        if max_new_tokens is not None:
            forward["generate_kwargs"]["max_new_tokens"] = max_new_tokens
        if return_emotion is not None:
            preprocess["return_emotion"] = return_emotion
            forward["return_emotion"] = return_emotion
        return preprocess, forward, {}

    def __call__(self, inputs: Any, batch_size: int | None = None, **kwargs) -> list:
        """One input gives `[{"generated_text": ...}]`; a list gives one such list per input."""
        preprocess, forward, postprocess = self._sanitize_parameters(**kwargs)
        preprocess = {**self._preprocess_params, **preprocess}
        forward = {**self._forward_params, **forward}
        if not isinstance(inputs, list):
            return self.run_single([inputs], preprocess, forward, postprocess)[0]
        size = batch_size or self._batch_size or 1
        results = []
        for start in range(0, len(inputs), size):
            results.extend(self.run_single(inputs[start : start + size], preprocess, forward, postprocess))
        return results

    def conversation(self, audio: Any, prompt: str, system: str, sampling_rate: int | None) -> list[dict]:
        item = {"type": "audio", "audio": audio}
        if sampling_rate is not None:
            item["sampling_rate"] = sampling_rate
        content = ([{"type": "text", "text": prompt}] if prompt else []) + [item]
        return [{"role": "system", "content": system}, {"role": "user", "content": content}]

    def preprocess(
        self,
        batch: list,
        prompt: str = "",
        system_prompt: str | None = None,
        empathetic: bool = False,
        sampling_rate: int | None = None,
        return_emotion: bool = False,
    ) -> dict:
        system = system_prompt if system_prompt is not None else preset_system_prompt(empathetic)
        if return_emotion:
            # The emotion query names the model's own labels.
            prompt = ser_instruction(self.model.config.emotion_labels)
        conversations = [self.conversation(audio, prompt, system, sampling_rate) for audio in batch]
        return self.processor.apply_chat_template(conversations, add_generation_prompt=True)

    def _forward(self, model_inputs: dict, generate_kwargs: dict | None = None, return_emotion: bool = False) -> dict:
        generate_kwargs = {"max_new_tokens": DEFAULT_MAX_NEW_TOKENS, **(generate_kwargs or {})}
        prompt_length = model_inputs["input_ids"].shape[1]
        sequences = self.model.generate(**model_inputs, **generate_kwargs)
        outputs = {"generated_ids": sequences[:, prompt_length:]}
        if return_emotion:
            embeds, lengths = self.model.model.get_audio_features(
                model_inputs["input_features"], model_inputs["feature_attention_mask"]
            )
            logits = self.model.classify_emotion(embeds, lengths, model_inputs["audio_item_index"])
            outputs["emotion_probs"] = logits.float().softmax(-1)
        return outputs

    def postprocess(self, model_outputs: dict) -> list[list[dict]]:
        texts = self.processor.batch_decode(model_outputs["generated_ids"], skip_special_tokens=True)
        results = [[{"generated_text": text.strip()}] for text in texts]
        if "emotion_probs" in model_outputs:
            labels = self.model.config.emotion_labels
            for result, probs in zip(results, model_outputs["emotion_probs"].tolist()):
                scores = dict(zip(labels, probs))
                result[0].update(
                    emotion=max(scores, key=scores.get), scores=scores, ser_answer=result[0]["generated_text"]
                )
        return results

    @torch.inference_mode()
    def forward(self, model_inputs: dict, **forward_params) -> dict:
        model_inputs = model_inputs.to(self.model.device)
        return self._forward(model_inputs, **forward_params)


__all__ = ["AudioToTextPipeline"]
