"""A checkpoint saved by an earlier version of the package keeps loading with the same outputs.

`fixtures/tiny_checkpoint_v1` was written by the code as it stood before the layout change (issue 15):
a tiny random model with audio-scope LoRA, its processor and its remote code; beside it, the inputs
and outputs that code computed. Never regenerate it: it is the contract with checkpoints in the wild.
"""

from pathlib import Path

import torch
from safetensors.torch import load_file

from modeling_blsp_emo import BlspEmoForConditionalGeneration, BlspEmoProcessor

from fresh_process import run_isolated

FIXTURE = Path(__file__).parent / "fixtures" / "tiny_checkpoint_v1"
EXPECTED = load_file(FIXTURE.parent / "tiny_checkpoint_v1_expected.safetensors")
INPUT_NAMES = ("input_ids", "attention_mask", "input_features", "feature_attention_mask", "audio_item_index")


def fixture_inputs() -> dict[str, torch.Tensor]:
    return {name: EXPECTED[f"input_{name}"] for name in INPUT_NAMES}


def test_processor_of_today_prepares_the_same_inputs():
    processor = BlspEmoProcessor.from_pretrained(FIXTURE)
    clip = EXPECTED["clip"].numpy()
    conversation = [{"role": "user", "content": [
        {"type": "text", "text": "hello "}, {"type": "audio", "audio": clip, "sampling_rate": 16000},
    ]}]
    inputs = processor.apply_chat_template(conversation)
    for name, expected in fixture_inputs().items():
        torch.testing.assert_close(inputs[name], expected, rtol=0, atol=1e-6, msg=name)


def test_model_code_of_today_gives_the_saved_outputs():
    model = BlspEmoForConditionalGeneration.from_pretrained(FIXTURE).eval()
    assert model.config.lora_scope == "audio"
    with torch.no_grad():
        output = model(**fixture_inputs())
        generated = model.generate(**fixture_inputs(), max_new_tokens=6, do_sample=False)
    torch.testing.assert_close(output.logits, EXPECTED["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.emotion_logits, EXPECTED["emotion_logits"], rtol=1e-5, atol=1e-5)
    assert generated[:, EXPECTED["input_input_ids"].shape[1] :].tolist() == EXPECTED["generated"].tolist()


def test_shipped_remote_code_gives_the_saved_outputs_in_a_fresh_process(tmp_path):
    torch.save(fixture_inputs(), tmp_path / "inputs.pt")
    result = run_isolated(
        f"""
import json, sys, torch
from transformers import AutoModel
model = AutoModel.from_pretrained({str(FIXTURE)!r}, trust_remote_code=True).eval()
inputs = torch.load({str(tmp_path / "inputs.pt")!r})
with torch.no_grad():
    output = model(**inputs)
    generated = model.generate(**inputs, max_new_tokens=6, do_sample=False)
torch.save({{"logits": output.logits, "emotion_logits": output.emotion_logits}}, {str(tmp_path / "out.pt")!r})
print(json.dumps({{"generated": generated[:, inputs["input_ids"].shape[1]:].tolist(),
                  "module": type(model).__module__,
                  "package_imported": any(m.split(".")[0] == "modeling_blsp_emo" for m in sys.modules)}}))
""",
        tmp_path,
    )
    assert result["package_imported"] is False and result["module"].startswith("transformers_modules.")
    assert result["generated"] == EXPECTED["generated"].tolist()
    outputs = torch.load(tmp_path / "out.pt")
    torch.testing.assert_close(outputs["logits"], EXPECTED["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(outputs["emotion_logits"], EXPECTED["emotion_logits"], rtol=1e-5, atol=1e-5)
