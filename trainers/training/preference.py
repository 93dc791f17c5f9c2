"""Stage 3 (optional), emotion preference alignment: DPO on pairs from `processing.preference_pairs`,
so that the clip's voice, not how likely a text is on its own, decides which continuation the model
prefers. Needs trl (`pip install 'blsp-emo[preference]'`); nothing else in the package imports this module.

How the audio gets through trl's `DPOTrainer` (trl 1.16):
- trl's dataset preparation (`_prepare_dataset`) tokenizes `prompt`/`chosen`/`rejected` text and
  would drop the speech; here it only checks the pair fields, and `SpeechPreferenceCollator` builds
  the speech prompts, as trl does itself for vision datasets (it skips the preparation for them and
  tokenizes in `DataCollatorForVisionPreference`). `remove_unused_columns` is forced off for the same reason.
- trl scores a batch of `[chosen rows; rejected rows]` in one forward with a fused LM head
  (`add_fused_lm_head`: the model's backbone, here `BlspEmoModel`, then log-probabilities from
  `lm_head.weight`); the collator repeats each clip's features for both halves, in row order.
- The fused path never runs the emotion head, so its loss (weight `emotion_weight`, off by
  default) comes from a separate head pass over the chosen half's features in `compute_loss`.
- The reference is the frozen stage-2 model: passed explicitly (`frozen_reference`) or, with
  `precompute_ref_log_probs=True`, scored once before training with the untrained policy. Without
  either, trl would reload it with `AutoModelForCausalLM` from the config's name, which is not
  this architecture, so the trainer refuses. (trl's PEFT route, adapters disabled as the reference,
  is only right when nothing but the LoRA trains; it is not used here.)
"""

import copy
import logging
from collections.abc import Sequence

import torch
from accelerate.utils import is_peft_model
from datasets import Dataset
from torch import nn
from torch.nn import functional as F
from trl import DPOConfig, DPOTrainer

from modeling_blsp_emo import BlspEmoForConditionalGeneration, BlspEmoProcessor, load_audio
from modeling_blsp_emo.prompts import EMOTION_CONTINUATION_INSTRUCTION, NEUTRAL_SYSTEM_PROMPT
from processing.collators import IGNORE_INDEX, SpeechContinuationCollator, concatenate
from processing.errors import UserInputError
from processing.preference_pairs import PAIR_FIELDS
from trainers.training.base import emotion_scores_train, forget_emotion_calibration, load_trained_weights, save_trained_part

logger = logging.getLogger(__name__)
# Collated inputs of the emotion-head pass only: the fused LM forward must not receive them.
HEAD_INPUTS = ("emotion_labels", "audio_item_index")
REFERENCE_LOG_PROBS = ("ref_chosen_logps", "ref_rejected_logps")


class SpeechPreferenceCollator:
    """Collates pairs (`audio`, `chosen`, `rejected`, `chosen_truncated`, `rejected_truncated`, and
    `emotion` when `label2id` is given) into one batch of `2 * pairs` rows, chosen rows first:

    - `input_ids`, `attention_mask` `(2B, seq)`: the stage-2 speech prompt (as
      `SpeechContinuationCollator` builds it) followed by the response, right padded;
    - `completion_mask` `(2B, seq)`: 1 on the response tokens (what DPO scores);
    - `input_features`, `feature_attention_mask`: the clips' windows, then the same windows again,
      so each rejected row hears its clip exactly as its chosen row does;
    - with `label2id`: `emotion_labels` `(B,)` and `audio_item_index` (the chosen half's windows);
    - `ref_chosen_logps`, `ref_rejected_logps` `(B,)` when the pairs carry them (precomputed reference).
    """

    def __init__(
        self,
        processor: BlspEmoProcessor,
        instruction: str = EMOTION_CONTINUATION_INSTRUCTION,
        *,
        system_prompt: str = NEUTRAL_SYSTEM_PROMPT,
        label2id: dict[str, int] | None = None,
    ):
        self.speech = SpeechContinuationCollator(processor, instruction, system_prompt=system_prompt)
        self.label2id = label2id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        speech = self.speech
        clips = [load_audio(example["audio"], name=f"pair {i} ({example['text']!r})") for i, example in enumerate(examples)]
        responses = speech.tokenize(
            [speech.chat.response(e[side], bool(e[f"{side}_truncated"])) for side in ("chosen", "rejected") for e in examples]
        )
        batch = concatenate(speech.speech_prompts(clips) * 2, responses, speech.pad_id)
        batch["completion_mask"] = (batch.pop("labels") != IGNORE_INDEX).long()
        features = speech.processor.audio_features(clips)
        batch["input_features"] = features["input_features"].repeat(2, 1, 1)
        batch["feature_attention_mask"] = features["feature_attention_mask"].repeat(2, 1)
        if self.label2id is not None:
            batch["emotion_labels"] = torch.tensor([self.label2id[e["emotion"]] for e in examples], dtype=torch.long)
            batch["audio_item_index"] = features["audio_item_index"]
        for name in REFERENCE_LOG_PROBS:
            if name in examples[0]:
                batch[name] = torch.tensor([example[name] for example in examples], dtype=torch.float32)
        return batch


def frozen_reference(model: BlspEmoForConditionalGeneration) -> BlspEmoForConditionalGeneration:
    """A frozen copy (eval mode, no parameter requiring gradients) of the stage-2 model: the DPO reference."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def prepare_for_preference(
    model: BlspEmoForConditionalGeneration, train_adapter: bool = True, train_encoder: bool = False, train_head: bool = False
) -> list[str]:
    """Set which weights DPO trains: the audio-scope LoRA (when the checkpoint has it), the adapter,
    optionally the Whisper encoder and the emotion head; never the LLM or its LM head. Returns the
    trained parameters' names. The encoder stays frozen by default: the stage changes how the LLM
    uses what it hears, not what the encoder hears. With `train_adapter=False` as well, only the LoRA
    trains and the emotion head's input is exactly stage 2's."""
    prefixes = ("model.adapter.",) * train_adapter + ("model.audio_encoder.",) * train_encoder + ("emotion_head.",) * train_head
    trained = []
    for name, parameter in model.named_parameters():
        is_audio_lora = name.startswith("model.language_model.") and (".lora_A." in name or ".lora_B." in name)
        parameter.requires_grad_(is_audio_lora or name.startswith(prefixes))
        if parameter.requires_grad:
            trained.append(name)
    if not trained:
        raise UserInputError(
            "nothing to train: this checkpoint has no audio-scope LoRA (and lora_rank is 0) and the adapter, encoder and "
            "head are frozen"
        )
    return trained


class SpeechPreferenceTrainer(DPOTrainer):
    """trl's `DPOTrainer` for BLSP-Emo: pairs of continuations of a clip, scored given its speech.

    `train_dataset`: pairs (a list of dicts or a `datasets.Dataset`) with the fields of
    `processing.preference_pairs.PAIR_FIELDS`. `ref_model`: the frozen stage-2 model
    (`frozen_reference`), or None with `args.precompute_ref_log_probs=True`. The loss is trl's
    (`args.loss_type`, default sigmoid DPO with `args.beta`) plus `emotion_weight` times the emotion
    head's cross-entropy on the clips. `args.max_length` is not applied: cutting a sequence could
    cut its speech. Checkpoints during training hold the trained weights only. A fitted emotion
    temperature is reset to 1.0 (`forget_emotion_calibration`) when the head's scores can change
    (`emotion_scores_train`: not with the encoder and head frozen under `"encoder_stats"` pooling).
    """

    def __init__(
        self,
        model: BlspEmoForConditionalGeneration,
        ref_model: BlspEmoForConditionalGeneration | None = None,
        args: DPOConfig | None = None,
        *,
        processor: BlspEmoProcessor,
        train_dataset: Dataset | Sequence[dict],
        eval_dataset: Dataset | Sequence[dict] | None = None,
        emotion_weight: float = 0.0,
        instruction: str = EMOTION_CONTINUATION_INSTRUCTION,
        system_prompt: str = NEUTRAL_SYSTEM_PROMPT,
        **kwargs,
    ):
        if args is None:
            raise ValueError("pass a trl DPOConfig as `args` (output_dir, beta, steps, ...)")
        if ref_model is None and not args.precompute_ref_log_probs and not is_peft_model(model):
            raise ValueError(
                "no reference model: pass the frozen stage-2 model as `ref_model` (`frozen_reference(model)`) or set "
                "`precompute_ref_log_probs=True` (trl would otherwise load one by name with AutoModelForCausalLM)"
            )
        if ref_model is not None and any(parameter.requires_grad for parameter in ref_model.parameters()):
            raise ValueError("`ref_model` has trainable parameters; pass `frozen_reference(model)`")
        if args.remove_unused_columns:
            logger.info("remove_unused_columns set to False: the collator reads the pairs' audio and texts")
            args.remove_unused_columns = False
        self.emotion_weight = emotion_weight
        collator = SpeechPreferenceCollator(
            processor, instruction, system_prompt=system_prompt, label2id=model.config.label2id if emotion_weight else None
        )
        super().__init__(
            model=model, ref_model=ref_model, args=args, data_collator=collator,
            train_dataset=as_dataset(train_dataset), eval_dataset=None if eval_dataset is None else as_dataset(eval_dataset),
            processing_class=processor, **kwargs,
        )
        if emotion_scores_train(self.model):
            forget_emotion_calibration(self.model)

    # Private trl hook, on purpose: it is where trl turns text into token ids (see the module docstring).
    def _prepare_dataset(self, dataset, processing_class, args, dataset_name: str):
        missing = [name for name in PAIR_FIELDS if name not in next(iter(dataset))]
        if missing:
            raise UserInputError(
                f"the {dataset_name} pairs lack field(s) {missing}; build them with processing.preference_pairs"
            )
        return dataset

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """trl's DPO loss on the batch, plus `emotion_weight` × the emotion head's loss (logged as `emotion_loss`)."""
        head_inputs = {name: inputs.pop(name) for name in HEAD_INPUTS if name in inputs}
        result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        if not self.emotion_weight:
            return result
        emotion_loss = self.emotion_head_loss(model, inputs, **head_inputs)
        if return_outputs:
            return result[0] + self.emotion_weight * emotion_loss, result[1]
        return result + self.emotion_weight * emotion_loss

    def emotion_head_loss(
        self, model: nn.Module, inputs: dict, emotion_labels: torch.Tensor, audio_item_index: torch.Tensor
    ) -> torch.Tensor:
        """Cross-entropy of the emotion head on the batch's clips: the chosen half's windows (the
        rejected half repeats them), through the encoder and adapter once more."""
        unwrapped = self.accelerator.unwrap_model(model)
        if is_peft_model(unwrapped):
            unwrapped = unwrapped.get_base_model()
        windows = inputs["input_features"].shape[0] // 2
        logits = unwrapped.emotion_logits(inputs["input_features"][:windows], inputs["feature_attention_mask"][:windows], audio_item_index)
        loss = F.cross_entropy(logits.float(), emotion_labels)
        metrics = self._metrics["train" if self.model.training else "eval"]
        metrics["emotion_loss"].append(loss.item())
        metrics["emotion_accuracy"].append((logits.argmax(-1) == emotion_labels).float().mean().item())
        return loss

    def compute_ref_log_probs(self, model, inputs):
        """trl's reference scoring (used to precompute), without the head pass's inputs."""
        return super().compute_ref_log_probs(model, {key: value for key, value in inputs.items() if key not in HEAD_INPUTS})

    def create_model_card(self, *args, **kwargs) -> None:
        """Write no card: trl's would describe a text-generation model of an unknown base in the
        output folder; `blsp-emo push` renders BLSP-Emo's own card."""

    # Private Trainer hooks, as in `AlignmentTrainer`: checkpoints hold the trained weights only.
    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        save_trained_part(self, output_dir, state_dict)

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        load_trained_weights(model if model is not None else self.accelerator.unwrap_model(self.model), resume_from_checkpoint)


def as_dataset(pairs: Dataset | Sequence[dict]) -> Dataset:
    """Pairs as a `datasets.Dataset` (trl's trainer requires one)."""
    if isinstance(pairs, Dataset):
        return pairs
    if not pairs:
        raise UserInputError("no preference pairs to train on")
    return Dataset.from_list(list(pairs))
