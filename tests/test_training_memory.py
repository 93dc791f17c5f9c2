"""The memory savers of training (logits made in chunks, gradient checkpointing of the frozen blocks)
give the same losses and gradients as the plain computation."""

import pytest
import torch
from torch.nn import functional as F
from transformers import TrainingArguments

from modeling_blsp_emo.prompts import EMOTION_CONTINUATION_INSTRUCTION, SEMANTIC_TARGET_INSTRUCTION
from processing.collators import IGNORE_INDEX, SpeechContinuationCollator
from trainers.training.base import LOGITS_CHUNK_BYTES, MEMORY_LEAN_CHUNK_SIZE
from trainers.training.emotion_alignment import EmotionAlignmentTrainer, LoraSettings, prepare_for_emotion_alignment
from trainers.training.losses import (
    SCRATCH_ROWS,
    chunked_cross_entropy,
    chunked_distillation_kl,
    distillation_kl,
    predicted_tokens,
    predicting_positions,
)
from trainers.training.semantic_alignment import SemanticAlignmentTrainer

from conftest import noise
from tiny_models import tiny_model

EXAMPLES = [
    {"audio": {"array": noise(6000 + 2500 * index, index), "sampling_rate": 16000}, "text": text, "target": target,
     "truncated": index % 2 == 1, "emotion": emotion}
    for index, (text, target, emotion) in enumerate([
        ("hello world", "the quick brown fox jumps over the lazy dog", "happy"),
        ("i am fine", "sad day today", "sad"),
        ("the lazy dog", "good day . hello world", "neutral"),
    ])
]  # fmt: skip


def training_args(tmp_path) -> TrainingArguments:
    return TrainingArguments(output_dir=str(tmp_path), report_to=[], remove_unused_columns=False, use_cpu=True)


def stage1(processor, tmp_path, text_model_type="qwen2", **trainer_kwargs):
    model = tiny_model(text_model_type).train()
    # Sharper distributions (the head alone scaled, untied from the input embeddings): the KL of a random
    # tiny model (~1e-5) is mostly rounding error.
    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach() * 20, requires_grad=False)
    collator = SpeechContinuationCollator(processor, SEMANTIC_TARGET_INSTRUCTION, with_teacher=True)
    trainer = SemanticAlignmentTrainer(model=model, args=training_args(tmp_path), **trainer_kwargs)
    return trainer, collator(EXAMPLES)


def stage2(processor, tmp_path, **trainer_kwargs):
    model = prepare_for_emotion_alignment(tiny_model(), LoraSettings(scope="audio", rank=4, dropout=0.0)).train()
    with torch.no_grad():  # LoRA B starts at zero: give it weights so that its gradients flow everywhere
        for name, parameter in model.named_parameters():
            if ".lora_B." in name:
                parameter.normal_(std=0.1)
    collator = SpeechContinuationCollator(processor, EMOTION_CONTINUATION_INSTRUCTION, label2id=model.config.label2id)
    trainer = EmotionAlignmentTrainer(model=model, args=training_args(tmp_path), **trainer_kwargs)
    return trainer, collator(EXAMPLES)


def loss_and_gradients(trainer, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    trainer.model.zero_grad(set_to_none=True)
    loss = trainer.compute_loss(trainer.model, dict(batch))
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None}


def plain_stage1_loss(model, batch) -> torch.Tensor:
    """Stage 1 the direct way: the model's own logits at the predicting positions, all at once."""
    teacher = {key.removeprefix("teacher_"): value for key, value in batch.items() if key.startswith("teacher_")}
    student = {key: value for key, value in batch.items() if not key.startswith("teacher_") and key != "labels"}
    with torch.no_grad():
        teacher_logits = model(**{k: v for k, v in teacher.items() if k != "labels"},
                               logits_to_keep=predicting_positions(teacher["labels"])).logits  # fmt: skip
    student_logits = model(**student, logits_to_keep=predicting_positions(batch["labels"])).logits
    return distillation_kl(teacher_logits, student_logits, model.config.kd_temperature)


def plain_stage2_loss(model, batch) -> torch.Tensor:
    inputs = {key: value for key, value in batch.items() if key != "labels"}
    positions = predicting_positions(batch["labels"])
    outputs = model(**inputs, logits_to_keep=positions)
    logits = outputs.logits.float()
    return torch.nn.functional.cross_entropy(logits, predicted_tokens(batch["labels"], positions)) + outputs.emotion_loss


def assert_same(expected: tuple, actual: tuple) -> None:
    (expected_loss, expected_grads), (loss, grads) = expected, actual
    torch.testing.assert_close(loss, expected_loss, rtol=1e-5, atol=0)
    assert grads.keys() == expected_grads.keys() and grads
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], rtol=1e-5, atol=1e-5 * float(expected_grads[name].abs().max()), msg=name)


@pytest.mark.parametrize("text_model_type", ["qwen2", "llama"])
def test_stage1_kl_in_chunks_equals_all_logits_at_once(processor, tmp_path, text_model_type):
    trainer, batch = stage1(processor, tmp_path, text_model_type, logits_chunk_size=3)
    model = trainer.model
    model.zero_grad(set_to_none=True)
    reference = plain_stage1_loss(model, batch)
    reference.backward()
    plain = reference.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert set(plain[1]) and all(name.startswith("model.adapter.") for name in plain[1])
    assert_same(plain, loss_and_gradients(trainer, batch))


def test_stage1_with_gradient_checkpointing_gives_the_same_adapter_gradients(processor, tmp_path):
    trainer, batch = stage1(processor, tmp_path, logits_chunk_size=None)
    plain = loss_and_gradients(trainer, batch)
    trainer.model.activation_checkpointing_enable()  # as `Trainer.train` does for activation_checkpointing=True
    # The LLM is frozen; the adapter's output reaches the checkpointed blocks through inputs_embeds.
    assert all(not p.requires_grad for p in trainer.model.model.language_model.parameters())
    trainer.logits_chunk_size = 2
    assert_same(plain, loss_and_gradients(trainer, batch))


def test_stage2_cross_entropy_in_chunks_and_checkpointing_match_the_plain_loss(processor, tmp_path):
    trainer, batch = stage2(processor, tmp_path, logits_chunk_size=4)
    model = trainer.model
    model.zero_grad(set_to_none=True)
    reference = plain_stage2_loss(model, batch)
    reference.backward()
    plain = reference.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert any(".lora_A." in name for name in plain[1]) and any(name.startswith("model.audio_encoder.") for name in plain[1])
    assert_same(plain, loss_and_gradients(trainer, batch))
    model.activation_checkpointing_enable()
    assert_same(plain, loss_and_gradients(trainer, batch))


def test_training_with_gradient_checkpointing_reaches_the_same_adapter(processor, tmp_path):
    collator = SpeechContinuationCollator(processor, SEMANTIC_TARGET_INSTRUCTION, with_teacher=True)
    adapters = []
    for checkpointing in (False, True):
        args = TrainingArguments(
            output_dir=str(tmp_path / str(checkpointing)), per_device_train_batch_size=3, max_steps=2, learning_rate=1e-2,
            report_to=[], remove_unused_columns=False, use_cpu=True, save_strategy="no", seed=0,
            activation_checkpointing=checkpointing,
        )  # fmt: skip
        trainer = SemanticAlignmentTrainer(model=tiny_model(), args=args, train_dataset=EXAMPLES, data_collator=collator)
        trainer.train()
        assert trainer.model.is_activation_checkpointing == checkpointing
        adapters.append(trainer.model.model.adapter.state_dict())
    for name, weight in adapters[0].items():
        torch.testing.assert_close(adapters[1][name], weight, rtol=1e-5, atol=1e-6, msg=name)


def test_auto_logits_chunks_are_lean_under_checkpointing_and_sized_by_bytes_otherwise(processor, tmp_path):
    trainer, _ = stage1(processor, tmp_path)
    model = trainer.model
    vocab_size = model.get_output_embeddings().weight.shape[0]
    assert trainer.logits_chunk_size == "auto"
    assert trainer.logits_chunk_rows(model) == LOGITS_CHUNK_BYTES // (4 * vocab_size) > MEMORY_LEAN_CHUNK_SIZE
    model.activation_checkpointing_enable()
    assert trainer.logits_chunk_rows(model) == MEMORY_LEAN_CHUNK_SIZE
    trainer.logits_chunk_size = 5
    assert trainer.logits_chunk_rows(model) == 5


def test_a_trainable_lm_head_is_refused(processor, tmp_path):
    trainer, batch = stage1(processor, tmp_path)
    trainer.model.lm_head.weight.requires_grad_(True)
    with pytest.raises(ValueError, match="the LM head is trainable"):
        trainer.compute_loss(trainer.model, dict(batch))


def softcapped_head(weight: torch.Tensor):
    """A frozen LM head with Gemma-style soft-capping: `compute_logits` ends in a nonlinearity."""
    return lambda hidden: torch.tanh(hidden @ weight.T / 3.0) * 3.0


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 12])
@pytest.mark.parametrize("capped", [False, True])
def test_chunked_losses_match_autograd_of_the_plain_formulas(chunk_size, capped):
    """The in-place analytic gradients of the chunked KL and cross-entropy equal autograd through the
    plain formulas, also with uneven chunks (and chunks longer than the KL's scratch rows, with a
    remainder), ignored targets and a soft-capped head."""
    generator = torch.Generator().manual_seed(0)
    weight = torch.randn(11, 6, generator=generator)
    head = softcapped_head(weight) if capped else (lambda hidden: hidden @ weight.T)
    rows = 2 * SCRATCH_ROWS + 3
    student = torch.randn(rows, 6, generator=generator, requires_grad=True)
    teacher = torch.randn(rows, 6, generator=generator)
    targets = torch.randint(0, 11, (rows,), generator=generator)
    targets[[1, 4, rows - 1]] = IGNORE_INDEX

    kl, agreement = chunked_distillation_kl(student, teacher, head, 2.0, chunk_size)
    (kl_grad,) = torch.autograd.grad(kl, student)
    plain_kl = distillation_kl(head(teacher), head(student), 2.0)
    (plain_kl_grad,) = torch.autograd.grad(plain_kl, student)
    torch.testing.assert_close(kl, plain_kl)
    torch.testing.assert_close(kl_grad, plain_kl_grad)
    assert agreement == (head(teacher).argmax(-1) == head(student).argmax(-1)).float().mean()

    ce = chunked_cross_entropy(student, targets, head, chunk_size)
    (ce_grad,) = torch.autograd.grad(ce, student)
    plain_ce = F.cross_entropy(head(student), targets, ignore_index=IGNORE_INDEX)
    (plain_ce_grad,) = torch.autograd.grad(plain_ce, student)
    torch.testing.assert_close(ce, plain_ce)
    torch.testing.assert_close(ce_grad, plain_ce_grad)
    assert ce_grad[targets == IGNORE_INDEX].abs().max() == 0
