"""Checkpoints carry their code: they load with trust_remote_code in a process without this package."""

import json

import torch
from transformers import AutoModel

from modeling_blsp_emo import BlspEmoProcessor

from conftest import noise
from fresh_process import run_isolated


def test_checkpoint_declares_remote_code_and_pipeline(saved_checkpoint):
    config = json.loads((saved_checkpoint / "config.json").read_text())
    assert config["auto_map"]["AutoModel"] == "modeling_blsp_emo.BlspEmoForConditionalGeneration"
    assert config["custom_pipelines"]["audio-to-text"]["impl"] == "pipeline_blsp_emo.AudioToTextPipeline"
    processor_config = json.loads((saved_checkpoint / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_blsp_emo.BlspEmoProcessor"
    for name in ("modeling_blsp_emo.py", "processing_blsp_emo.py", "pipeline_blsp_emo.py", "audio_loading.py"):
        assert (saved_checkpoint / name).is_file()
    assert not list(saved_checkpoint.glob("*.bin"))


def test_fresh_process_loads_checkpoint_with_same_logits(saved_checkpoint, tmp_path):
    processor = BlspEmoProcessor.from_pretrained(saved_checkpoint)
    audio = {"type": "audio", "audio": noise(24000), "sampling_rate": 16000}
    conversation = [{"role": "user", "content": [{"type": "text", "text": "hello "}, audio]}]
    inputs = processor.apply_chat_template(conversation)
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    model = AutoModel.from_pretrained(saved_checkpoint)
    with torch.no_grad():
        expected = model(**inputs).logits

    result = run_isolated(
        f"""
import json, sys, torch
from transformers import AutoConfig, AutoModel, AutoProcessor
config = AutoConfig.from_pretrained({str(saved_checkpoint)!r}, trust_remote_code=True)
model = AutoModel.from_pretrained({str(saved_checkpoint)!r}, trust_remote_code=True).eval()
processor = AutoProcessor.from_pretrained({str(saved_checkpoint)!r}, trust_remote_code=True)
inputs = torch.load({str(tmp_path / "inputs.pt")!r})
with torch.no_grad():
    logits = model(**inputs).logits
torch.save(logits, {str(tmp_path / "logits.pt")!r})
print(json.dumps({{"package_imported": any(m.startswith("modeling_blsp_emo") for m in sys.modules),
                  "model_module": type(model).__module__, "config": type(config).__name__,
                  "processor": type(processor).__name__}}))
""",
        tmp_path,
    )
    assert result["package_imported"] is False
    assert result["model_module"].startswith("transformers_modules.")
    assert result == {**result, "config": "BlspEmoConfig", "processor": "BlspEmoProcessor"}
    torch.testing.assert_close(torch.load(tmp_path / "logits.pt"), expected, rtol=0, atol=0)
