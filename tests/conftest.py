import numpy as np
import pytest
from transformers import TrainerCallback

from modeling_blsp_emo import BlspEmoProcessor

from tiny_models import save_tiny_causal_lm, save_tiny_whisper, tiny_feature_extractor, tiny_model, tiny_tokenizer


def noise(num_samples: int, seed: int = 0) -> np.ndarray:
    """Deterministic quiet noise standing in for speech."""
    return (np.random.default_rng(seed).standard_normal(num_samples) * 0.1).astype(np.float32)


@pytest.fixture
def processor() -> BlspEmoProcessor:
    return BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer())


@pytest.fixture(scope="session")
def pretrained_parts(tmp_path_factory):
    """A tiny Whisper and a tiny Llama-type causal LM saved as ordinary pretrained checkpoints."""
    root = tmp_path_factory.mktemp("pretrained")
    save_tiny_whisper(root / "whisper")
    save_tiny_causal_lm(root / "llm", "llama")
    return root / "whisper", root / "llm"


@pytest.fixture(scope="session")
def saved_checkpoint(tmp_path_factory):
    """A tiny BLSP-Emo checkpoint (model, processor, remote code, pipeline) on disk."""
    directory = tmp_path_factory.mktemp("checkpoint")
    model = tiny_model()
    model.save_pretrained(directory)
    BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer()).save_pretrained(directory)
    return directory


class StopAfterStep(TrainerCallback):
    """Ends training after a given step, as a kill right after a checkpoint would."""

    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        control.should_training_stop = state.global_step >= self.step
