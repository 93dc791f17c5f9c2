"""Checkpoints carry their code: they load with trust_remote_code in a process without this package."""

import json

import torch
from transformers import AutoModel

from modeling_blsp_emo import BlspEmoProcessor

from conftest import noise
from fresh_process import run_isolated


def test_checkpoint_declares_remote_code_and_pipeline(saved_checkpoint):
    config = json.loads((saved_checkpoint / "config.json").read_text())
    for auto_class in ("AutoModel", "AutoModelForCausalLM", "AutoModelForMultimodalLM"):
        assert config["auto_map"][auto_class] == "modeling_blsp_emo.BlspEmoForConditionalGeneration"
    assert config["auto_map"]["AutoModelForAudioClassification"] == "modeling_blsp_emo.BlspEmoForAudioClassification"
    assert config["custom_pipelines"]["audio-to-text"]["impl"] == "pipeline_blsp_emo.AudioToTextPipeline"
    processor_config = json.loads((saved_checkpoint / "processor_config.json").read_text())
    assert processor_config["auto_map"]["AutoProcessor"] == "processing_blsp_emo.BlspEmoProcessor"
    for name in ("modeling_blsp_emo.py", "processing_blsp_emo.py", "pipeline_blsp_emo.py", "audio_loading.py", "compatibility.py"):
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


def test_fresh_process_multimodal_auto_class_and_generation_from_embeddings(saved_checkpoint, tmp_path):
    processor = BlspEmoProcessor.from_pretrained(saved_checkpoint)
    audio = {"type": "audio", "audio": noise(20000, 3), "sampling_rate": 16000}
    inputs = processor.apply_chat_template([{"role": "user", "content": [audio]}])
    torch.save(dict(inputs), tmp_path / "inputs.pt")
    model = AutoModel.from_pretrained(saved_checkpoint).eval()
    expected = model.generate(**inputs, max_new_tokens=4, do_sample=False)[:, inputs["input_ids"].shape[1] :]
    result = run_isolated(
        f"""
import json, torch
from transformers import AutoModelForCausalLM, AutoModelForMultimodalLM
inputs = torch.load({str(tmp_path / "inputs.pt")!r})
model = AutoModelForMultimodalLM.from_pretrained({str(saved_checkpoint)!r}, trust_remote_code=True).eval()
causal = AutoModelForCausalLM.from_pretrained({str(saved_checkpoint)!r}, trust_remote_code=True)
embeds = model.get_input_embeddings()(inputs.pop("input_ids"))
generated = model.generate(inputs_embeds=embeds, **inputs, max_new_tokens=4, do_sample=False)
print(json.dumps({{"generated": generated.tolist(), "classes": [type(model).__name__, type(causal).__name__]}}))
""",
        tmp_path,
    )
    assert result["classes"] == ["BlspEmoForConditionalGeneration"] * 2
    assert result["generated"] == expected.tolist()
