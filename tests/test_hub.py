"""Publishing to the Hub (`trainers.hub.push`, `blsp-emo push`) against a local Hub-compatible server."""

import contextlib
import io
import json
import logging
import shutil

import pytest
import safetensors.torch
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.errors import RepositoryNotFoundError
from transformers import TrainingArguments

from trainers.checkpoints import describe_base_model
from trainers.checkpoints.builder import build_blsp_emo
from trainers.cli.main import main
from trainers.hub import (
    HubPublishError,
    checkpoint_files,
    push_model_to_hub,
    push_to_hub,
    render_model_card,
)

from fresh_process import run_isolated
from hub_server import HubServer

TOKEN = "hf_alice_test_token_0123456789"
BOB_TOKEN = "hf_bob_test_token_0123456789"
BASE_MODELS = {
    "encoder": {"id": "openai/whisper-tiny.en", "name": "openai/whisper-tiny.en", "license": "mit"},
    "llm": {"id": "HuggingFaceTB/SmolLM2-135M-Instruct", "name": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"},
}
METRICS = {
    "dataset": "AbstractTTS/IEMOCAP", "dataset_name": "IEMOCAP", "split": "test", "num_examples": 40,
    "metrics": {"accuracy": 0.8, "unweighted_accuracy": 0.75, "weighted_accuracy": 0.8, "macro_f1": 0.7,
                "unanswered": 2, "confusion_matrix": [[8, 2], [2, 8]]},
}


@pytest.fixture(scope="module")
def hub():
    with HubServer({TOKEN: "alice", BOB_TOKEN: "bob"}, organizations={"emo-lab": {"alice"}}, refused={"alice/refused-*"}) as server:
        with pytest.MonkeyPatch.context() as patch:
            # huggingface_hub reads HF_ENDPOINT/HF_HUB_OFFLINE at import time: point it at the server.
            patch.setattr(constants, "ENDPOINT", server.endpoint)
            patch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", server.endpoint + "/{repo_id}/resolve/{revision}/{filename}")
            patch.setattr(constants, "HF_HUB_OFFLINE", False)
            patch.setenv("HF_TOKEN", TOKEN)
            yield server


@pytest.fixture
def hub_cache(monkeypatch, tmp_path):
    """In-process downloads go to a private cache."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub_cache"))


def make_checkpoint(directory, saved_checkpoint, metrics: dict | None = METRICS, **config_changes):
    """A copy of the tiny checkpoint with base models recorded (as the builder does) and SER metrics."""
    shutil.copytree(saved_checkpoint, directory)
    config = json.loads((directory / "config.json").read_text())
    config.update({"base_models": BASE_MODELS, **config_changes})
    (directory / "config.json").write_text(json.dumps(config))
    if metrics is not None:
        (directory / "ser_metrics.json").write_text(json.dumps(metrics))
    return directory


@pytest.fixture(scope="module")
def checkpoint(saved_checkpoint, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("publish") / "model", saved_checkpoint)


@contextlib.contextmanager
def captured():
    """stdout, stderr and every log record (down to DEBUG) of a block, as strings once it ends."""
    out, log = io.StringIO(), io.StringIO()
    handler, root = logging.StreamHandler(log), logging.getLogger()
    level, result = root.level, {}
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            yield result
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
        result.update(out=out.getvalue(), log=log.getvalue())


@pytest.fixture(scope="module")
def pushed(hub, checkpoint):
    """`blsp-emo push --verify` of the tiny checkpoint: exit status, output and the server's requests."""
    hub.requests.clear()
    with captured() as output:
        status = main(["push", "--model", str(checkpoint), "--repo-id", "alice/tiny-blsp-emo", "--verify"])
    return {"status": status, "requests": list(hub.requests), **output}


def test_push_uploads_everything_in_one_commit(pushed, hub, checkpoint):
    assert pushed["status"] == 0
    expected = {path.relative_to(checkpoint).as_posix() for path in checkpoint_files(checkpoint)}
    assert hub.history("alice/tiny-blsp-emo") == [f"Upload BLSP-Emo model ({len(expected) + 1} files)", "initial commit"]
    files = hub.files("alice/tiny-blsp-emo")
    assert set(files) == expected | {"README.md", ".gitattributes"}
    assert {"model.safetensors", "generation_config.json", "processor_config.json", "chat_template.jinja",
            "pipeline_blsp_emo.py", "modeling_blsp_emo.py", "audio_loading.py", "prompts.py"} <= set(files)
    assert not {"ser_metrics.json", "trainer_state.json"} & set(files)
    config = json.loads(files["config.json"])
    assert config["auto_map"]["AutoModel"] == "modeling_blsp_emo.BlspEmoForConditionalGeneration"
    assert config["custom_pipelines"]["audio-to-text"]["impl"] == "pipeline_blsp_emo.AudioToTextPipeline"
    assert files["model.safetensors"] == (checkpoint / "model.safetensors").read_bytes()
    assert hub.unhandled == []


def test_verify_loads_the_pushed_repo_in_a_fresh_process(pushed):
    assert "verified in a fresh process" in pushed["out"]
    # The fresh process downloaded the files itself (its cache started empty).
    downloads = {path.rsplit("/", 1)[-1] for method, path in pushed["requests"] if method == "GET" and "/resolve/" in path}
    assert {"config.json", "model.safetensors", "pipeline_blsp_emo.py", "processor_config.json"} <= downloads


def test_token_is_never_printed_logged_or_published(pushed, hub):
    assert TOKEN not in pushed["out"] + pushed["log"]
    assert all(TOKEN.encode() not in content for content in hub.files("alice/tiny-blsp-emo").values())


def test_card_metadata_is_what_the_hub_indexes(pushed):
    info = HfApi().model_info("alice/tiny-blsp-emo")
    card = info.card_data
    assert info.pipeline_tag == "audio-text-to-text" and card.library_name == "transformers"
    assert card.license == "apache-2.0"  # the LLM's licence governs the derived weights
    assert card.base_model == ["openai/whisper-tiny.en", "HuggingFaceTB/SmolLM2-135M-Instruct"]
    assert card.datasets == ["AbstractTTS/IEMOCAP"] and card.language == ["en"]
    results = {result.metric_type: result.metric_value for result in card.eval_results}
    assert results == {"accuracy": 0.8, "unweighted_accuracy": 0.75, "weighted_accuracy": 0.8, "macro_f1": 0.7}
    assert card.eval_results[0].dataset_split == "test" and card.eval_results[0].task_type == "audio-classification"


def test_card_text_has_usage_licences_results_and_unknown_training(checkpoint):
    text = render_model_card(checkpoint, "alice/tiny-blsp-emo").text
    assert 'pipeline("audio-to-text", model="alice/tiny-blsp-emo", trust_remote_code=True)' in text
    assert "| speech encoder | [openai/whisper-tiny.en](https://huggingface.co/openai/whisper-tiny.en) | mit |" in text
    assert "| Unweighted accuracy (UA) | 75.0 % |" in text and "| Unanswered clips | 2 |" in text
    assert "Training details of this checkpoint are unknown" in text
    assert "## Intended use and limitations" in text
    assert "| emotion head | linear layer on the mean of the speech embeddings; labels:" in text
    assert "| emotion token | none |" in text


def test_card_names_what_an_encoder_stats_head_reads(saved_checkpoint, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "model", saved_checkpoint, emotion_pooling="encoder_stats")
    text = render_model_card(checkpoint, "alice/x").text
    assert "linear layer on the mean and standard deviation of the Whisper encoder's last and middle layers" in text


def test_card_names_the_emotion_token(saved_checkpoint, tmp_path):
    checkpoint = make_checkpoint(tmp_path / "model", saved_checkpoint, emotion_token=True)
    text = render_model_card(checkpoint, "alice/x").text
    assert "| emotion token | after each window's speech, the emotion head's probabilities × one embedding per emotion |" in text


def test_second_revision_goes_to_its_own_branch(pushed, hub, saved_checkpoint, tmp_path, hub_cache):
    relabelled = make_checkpoint(tmp_path / "v2", saved_checkpoint, metrics=None, id2label={"0": "calm", "1": "upset"})
    main_head = hub.history("alice/tiny-blsp-emo")
    result = push_to_hub(relabelled, "alice/tiny-blsp-emo", revision="v2")
    assert result.revision == "v2" and hub.history("alice/tiny-blsp-emo") == main_head
    assert hub.history("alice/tiny-blsp-emo", "v2")[1:] == main_head  # branched from main
    readme = hub.files("alice/tiny-blsp-emo", "v2")["README.md"].decode()
    assert 'revision="v2"' in readme and "No evaluation results were published" in readme
    loaded = run_isolated(
        """
import json
from transformers import AutoConfig
main = AutoConfig.from_pretrained("alice/tiny-blsp-emo", trust_remote_code=True)
v2 = AutoConfig.from_pretrained("alice/tiny-blsp-emo", revision="v2", trust_remote_code=True)
print(json.dumps({"main": main.emotion_labels, "v2": v2.emotion_labels, "class": type(v2).__module__}))
""",
        tmp_path,
        env={"HF_HUB_OFFLINE": None, "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": TOKEN},
    )
    assert loaded["main"] == ["neutral", "happy", "angry", "sad", "surprise"] and loaded["v2"] == ["calm", "upset"]
    assert loaded["class"].startswith("transformers_modules.")


def test_repush_removes_stale_weights_and_code_but_keeps_other_files(hub, checkpoint):
    api = HfApi(token=TOKEN)
    api.create_repo("alice/stale")
    for name in ("pytorch_model.bin", "old_module.py", "figure.png"):
        api.upload_file(path_or_fileobj=b"old", path_in_repo=name, repo_id="alice/stale")
    push_to_hub(checkpoint, "alice/stale")
    files = set(hub.files("alice/stale"))
    assert "figure.png" in files and not {"pytorch_model.bin", "old_module.py"} & files
    assert "model.safetensors" in files


def test_missing_token_is_a_clear_error(hub, checkpoint, monkeypatch, tmp_path, capsys):
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no_token"))
    hub.requests.clear()
    assert main(["push", "--model", str(checkpoint), "--repo-id", "alice/no-token"]) == 2
    assert "blsp-emo push: no Hugging Face token found: log in with `hf auth login`, set the HF_TOKEN" in capsys.readouterr().err
    assert not [request for request in hub.requests if request[1] != "/api/agent-harnesses"]


def test_invalid_token_is_rejected_without_echoing_it(hub, checkpoint, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_valid_token_42")
    with pytest.raises(HubPublishError, match=r"rejected the token .*401") as error:
        push_to_hub(checkpoint, "alice/bad-token")
    assert "hf_not_a_valid_token_42" not in str(error.value)


@pytest.mark.parametrize("repo_id", ["alice/refused-model", "bob/not-alices"])
def test_refused_repo_is_a_clear_error(hub, checkpoint, repo_id):
    with pytest.raises(HubPublishError, match=rf"the Hub refused to create the repo {repo_id} \(403: .*namespace"):
        push_to_hub(checkpoint, repo_id)
    assert repo_id not in hub.state.repos


def test_private_repo_in_an_organisation_and_a_bare_name(hub, checkpoint):
    push_to_hub(checkpoint, "emo-lab/private-model", private=True)
    assert HfApi(token=TOKEN).model_info("emo-lab/private-model").private is True
    with pytest.raises(RepositoryNotFoundError):
        HfApi(token=BOB_TOKEN).model_info("emo-lab/private-model")
    assert push_to_hub(checkpoint, "bare-name").repo_id == "alice/bare-name"  # the token's own namespace


def test_card_metadata_is_checked_by_the_server(hub, checkpoint):
    card = render_model_card(checkpoint, "alice/tiny-blsp-emo")
    card.validate()
    broken = ModelCard(str(card).replace("license: apache-2.0", "license: nope"))
    with pytest.raises(ValueError, match="license"):
        broken.validate()


def test_custom_licence_becomes_other_with_name_and_link(checkpoint, tmp_path, saved_checkpoint):
    qwen = make_checkpoint(tmp_path / "qwen", saved_checkpoint, base_models={
        "encoder": BASE_MODELS["encoder"], "llm": {"id": "Qwen/Qwen-7B-Chat", "name": "Qwen/Qwen-7B-Chat", "license": "tongyi-qianwen"},
    })
    data = render_model_card(qwen, "alice/qwen-emo").data
    assert (data.license, data.license_name, data.license_link) == (
        "other", "tongyi-qianwen", "https://huggingface.co/Qwen/Qwen-7B-Chat/blob/main/LICENSE")


def test_training_runs_come_from_trainer_state_and_arguments(checkpoint, tmp_path):
    stage1, stage2 = tmp_path / "stage1", tmp_path / "stage2"
    (stage1 / "checkpoint-20").mkdir(parents=True)
    (stage1 / "checkpoint-20" / "trainer_state.json").write_text(json.dumps(
        {"global_step": 20, "epoch": 1.0, "log_history": [{"loss": 0.9, "kl": 0.9, "token_agreement": 0.4, "step": 10}]}))
    arguments = TrainingArguments(output_dir=str(stage1), learning_rate=1e-4, warmup_steps=5, weight_decay=0.05, report_to=[])
    import torch

    torch.save(arguments, stage1 / "checkpoint-20" / "training_args.bin")
    stage2.mkdir()
    (stage2 / "trainer_state.json").write_text(json.dumps(
        {"global_step": 30, "log_history": [{"loss": 2.0, "lm_loss": 1.5, "emotion_loss": 0.5, "emotion_accuracy": 0.6}]}))
    text = render_model_card(checkpoint, "alice/x", training_dirs=[stage1, stage2]).text
    assert "### Stage 1: semantic alignment" in text and "### Stage 2: emotion alignment" in text
    assert "| learning_rate | 0.0001 |" in text and "| weight_decay | 0.05 |" in text and "| kl | 0.9 |" in text
    assert "| emotion_accuracy | 0.6 |" in text
    assert "| global_step | 20 |" in text and "| global_step | 30 |" in text
    assert "Hyper-parameters: unknown" in text  # stage 2 saved no training arguments


def test_a_stage3_run_is_named_with_its_dpo_settings_and_rewards(checkpoint, tmp_path):
    trl = pytest.importorskip("trl")
    import torch

    stage3 = tmp_path / "stage3" / "checkpoint-80"
    stage3.mkdir(parents=True)
    log = {"loss": 0.45, "rewards/accuracies": 0.875, "rewards/margins": 1.21, "emotion_loss": 0.3, "step": 80}
    (stage3 / "trainer_state.json").write_text(json.dumps({"global_step": 80, "log_history": [log]}))
    arguments = trl.DPOConfig(output_dir=str(stage3), learning_rate=5e-4, beta=0.2, report_to=[], use_cpu=True)
    torch.save(arguments, stage3 / "training_args.bin")
    text = render_model_card(checkpoint, "alice/x", training_dirs=[stage3.parent]).text
    assert "### Stage 3: emotion preference alignment (DPO)" in text  # not stage 2, though it logs emotion_loss
    assert "| beta | 0.2 |" in text and "| learning_rate | 0.0005 |" in text
    assert "| rewards/accuracies | 0.875 |" in text and "| rewards/margins | 1.21 |" in text


@pytest.mark.parametrize("name", ["trainer_state.json", "training_args.json"])
def test_a_damaged_training_record_is_named(checkpoint, tmp_path, name):
    run = tmp_path / "stage1"
    run.mkdir()
    (run / "trainer_state.json").write_text(json.dumps({"global_step": 2, "log_history": [{"kl": 0.5}]}))
    (run / "training_args.json").write_text(json.dumps({"learning_rate": 1e-3}))
    (run / name).write_text('{"truncated": ')
    with pytest.raises(HubPublishError, match=f"{name}: not valid JSON"):
        render_model_card(checkpoint, "alice/x", training_dirs=[run])


@pytest.mark.parametrize(
    "metrics, message",
    [
        ({"split": "test", "metrics": {"accuracy": 0.5}}, r'expected \{"dataset": str'),
        ({"dataset": "d", "split": "test", "metrics": {"accuracy": 76.0}}, r"accuracy is 76.0, expected a fraction"),
        ({"dataset": "d", "split": "test", "metrics": {"accuracy": "high"}}, r"metric 'accuracy' is 'high'"),
        ([{"dataset": "d", "split": "test", "metrics": {}}], r"\(result 0\): 'metrics' holds no numeric metric"),
    ],
)
def test_metrics_file_shape_is_checked(checkpoint, tmp_path, metrics, message):
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps(metrics))
    with pytest.raises(HubPublishError, match=rf"metrics.json.*{message}"):
        render_model_card(checkpoint, "alice/x", metrics=path)


def test_incomplete_or_unmerged_checkpoints_are_refused(checkpoint, tmp_path):
    no_code = tmp_path / "no_code"
    shutil.copytree(checkpoint, no_code)
    (no_code / "speech_lengths.py").unlink()
    with pytest.raises(HubPublishError, match="remote-code file speech_lengths.py is missing"):
        checkpoint_files(no_code)
    unmerged = tmp_path / "unmerged"
    shutil.copytree(checkpoint, unmerged)
    weights = safetensors.torch.load_file(unmerged / "model.safetensors")
    weights = {f"base_model.model.{name}": value for name, value in weights.items()}
    safetensors.torch.save_file(weights, unmerged / "model.safetensors")
    with pytest.raises(HubPublishError, match="unmerged peft LoRA weights"):
        checkpoint_files(unmerged)


def test_push_model_merges_global_lora(hub, saved_checkpoint):
    from modeling_blsp_emo import BlspEmoProcessor
    from trainers.training.emotion_alignment import LoraSettings, prepare_for_emotion_alignment

    from tiny_models import tiny_feature_extractor, tiny_model, tiny_tokenizer

    wrapped = prepare_for_emotion_alignment(tiny_model(), LoraSettings("global", rank=2, alpha=2), train_encoder=False)
    processor = BlspEmoProcessor(tiny_feature_extractor(), tiny_tokenizer())
    push_model_to_hub(wrapped, processor, "alice/merged")
    files = hub.files("alice/merged")
    assert json.loads(files["config.json"])["lora_scope"] == "global"
    assert not [name for name in safetensors.torch.load(files["model.safetensors"]) if "lora" in name]


def test_builder_records_base_models_without_local_paths(pretrained_parts):
    model, _ = build_blsp_emo(*map(str, pretrained_parts))
    assert model.config.base_models == {
        "encoder": {"id": None, "name": "whisper", "license": None},
        "llm": {"id": None, "name": "llm", "license": None},
    }


def test_base_model_origins(hub, tmp_path, hub_cache):
    bundled = tmp_path / "cache" / "bundled" / "smollm2-135m-instruct"
    snapshot = tmp_path / "hf" / "models--openai--whisper-tiny.en" / "snapshots" / "abc123"
    for folder in (bundled, snapshot):
        folder.mkdir(parents=True)
    (snapshot / "README.md").write_text("---\nlicense: apache-2.0\n---\n")
    assert describe_base_model(str(bundled)) == {
        "id": "HuggingFaceTB/SmolLM2-135M-Instruct", "name": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0"}
    assert describe_base_model(str(snapshot)) == {
        "id": "openai/whisper-tiny.en", "name": "openai/whisper-tiny.en", "license": "apache-2.0"}
    api = HfApi(token=TOKEN)
    api.create_repo("alice/base-llm")
    api.upload_file(path_or_fileobj=b"---\nlicense: llama3.2\n---\n# card", path_in_repo="README.md", repo_id="alice/base-llm")
    assert describe_base_model("alice/base-llm") == {"id": "alice/base-llm", "name": "alice/base-llm", "license": "llama3.2"}
    assert describe_base_model("alice/absent")["license"] is None
