"""The LLM writes its own training targets: continuations of transcripts (stage 1) or emotion-aware
continuations given the true label (stage 2).

Generation is greedy and batched with left padding. Each shard appends to its own JSONL file one
whole batch at a time, so a killed run resumes exactly where the last complete batch ended, with
the same batch boundaries as an uninterrupted run.
"""

import json
import logging
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from modeling_blsp_emo.prompts import NEUTRAL_SYSTEM_PROMPT, SEMANTIC_TARGET_INSTRUCTION, emotion_target_instruction
from processing.cleaning import RefusalFilter
from processing.errors import UserInputError, output_folder
from processing.manifests import usable_audio
from processing.resume import check_settings, write_settings

logger = logging.getLogger(__name__)
MAX_NEW_TOKENS = 48


def semantic_prompt(example: dict) -> str:
    """Stage 1: continue the transcript."""
    return SEMANTIC_TARGET_INSTRUCTION + example["text"]


def emotion_prompt(example: dict) -> str:
    """Stage 2: continue the transcript in its true emotion (the release's wording)."""
    return emotion_target_instruction(example["emotion"]) + example["text"]


# The release's wording ("... reflects a 'sad' emotion tone ...") leaves a 1.5B writer's continuations
# often flat: a judge read the intended emotion in 45 % of them (47.5 % with the demonstration), against
# 60 % with this wording, which has the writer speak as someone who feels the emotion (40 targets, 8
# sentences; docs/demo_history.md). For writers other than the model's own LLM; off by default.
VIVID_EMOTION_INSTRUCTION = (
    "Someone who feels {feeling} just said the sentence below. Continue it in their voice with one short "
    "sentence that makes it obvious they feel {feeling}: "
)
# How a label reads after "feels"; other labels read as themselves.
FEELINGS = {"neutral": "calm and matter-of-fact", "surprise": "surprised"}


def vivid_emotion_instruction(emotion: str) -> str:
    return VIVID_EMOTION_INSTRUCTION.format(feeling=FEELINGS.get(emotion, emotion))


def vivid_emotion_prompt(example: dict) -> str:
    """Stage 2: continue the transcript as its speaker, making the true emotion plain."""
    return vivid_emotion_instruction(example["emotion"]) + example["text"]


# One worked example per release emotion, shown to the LLM before the real request (as an earlier
# chat exchange). Small LLMs (e.g. SmolLM2-135M) otherwise continue a sentence the same way for every
# emotion; the targets are still written by the LLM itself. Off by default (the release used none).
EMOTION_DEMONSTRATIONS = {
    "neutral": ("The meeting starts at nine.", "We will go through the agenda and then discuss the budget."),
    "happy": ("The meeting starts at nine.", "I can't wait, it's going to be such a great day with the whole team!"),
    "angry": ("The meeting starts at nine.", "And of course nobody told me until now, this is completely unacceptable!"),
    "sad": ("The meeting starts at nine.", "I don't really feel like going, everything has been so hard lately."),
    "surprise": ("The meeting starts at nine.", "Wait, really? I had no idea it was today, wow!"),
}


def emotion_demonstration(example: dict) -> list[dict]:
    """The worked example for the example's emotion, as a user/assistant exchange."""
    if example["emotion"] not in EMOTION_DEMONSTRATIONS:
        raise ValueError(f"no built-in demonstration for emotion {example['emotion']!r}: {sorted(EMOTION_DEMONSTRATIONS)}")
    sentence, continuation = EMOTION_DEMONSTRATIONS[example["emotion"]]
    return [
        {"role": "user", "content": emotion_target_instruction(example["emotion"]) + sentence},
        {"role": "assistant", "content": continuation},
    ]


# `generate-targets --emotion-wording` / the demo's `writer_wording`: the prompt, and the demonstration
# that `--demonstrations` shows before it. The vivid wording has none: shown one, the 1.5B writer
# copied its reply word for word into 15 of 40 angry targets (none with the release wording), and it
# reads as emotional without one (60 % either way).
EMOTION_WORDINGS = {
    "release": (emotion_prompt, emotion_demonstration),
    "vivid": (vivid_emotion_prompt, None),
}


def json_fields(example: dict) -> dict:
    """The example's fields that a JSON line can hold. Audio is kept as a file path when it has one;
    audio held only as bytes is left out (join the targets back to the source dataset by `index`)."""
    fields = {}
    for key, value in example.items():
        if key == "audio":
            if isinstance(value, dict) and value.get("bytes") is None:
                value = value.get("path")
            if not isinstance(value, str):
                continue
        try:
            json.dumps(value)
        except TypeError:
            continue
        fields[key] = value
    return fields


def shard_path(output_dir: str | Path, shard: int, num_shards: int) -> Path:
    return Path(output_dir) / f"targets-{shard:05d}-of-{num_shards:05d}.jsonl"


def completed_batches(path: Path, batch_size: int) -> int:
    """Whole batches already in a shard file; anything after the last whole batch (a batch cut
    short by a kill) is truncated away so that it is generated again with the same boundaries."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    complete_lines = data.count(b"\n")
    batches = complete_lines // batch_size
    keep = 0
    for _ in range(batches * batch_size):
        keep = data.index(b"\n", keep) + 1
    if keep != len(data):
        with path.open("r+b") as handle:
            handle.truncate(keep)
    return batches


def append_batch(path: Path, records: list[dict]) -> None:
    """Append records as one write, flushed to disk before the next batch starts."""
    with path.open("a", encoding="utf-8") as handle:
        handle.write("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records))
        handle.flush()
        os.fsync(handle.fileno())


def batched(iterable: Iterable, size: int) -> Iterator[list]:
    iterator = iter(iterable)
    while batch := list(islice(iterator, size)):
        yield batch


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """Token ids that end a reply: the generation config's EOS ids (plus the tokenizer's)."""
    eos = model.generation_config.eos_token_id
    ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    return ids


def writing_chat(prompt: str, system_prompt: str = NEUTRAL_SYSTEM_PROMPT, history: Sequence[dict] = ()) -> list[dict]:
    """The chat that asks the LLM to write a target: system prompt, earlier messages (e.g. a
    demonstration), then the request."""
    return [{"role": "system", "content": system_prompt}, *history, {"role": "user", "content": prompt}]


@torch.inference_mode()
def continue_texts(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[str],
    system_prompt: str = NEUTRAL_SYSTEM_PROMPT,
    max_new_tokens: int = MAX_NEW_TOKENS,
    histories: list[list[dict]] | None = None,
) -> list[tuple[str, bool]]:
    """Greedy replies to user `prompts` through the chat template: (text, truncated) pairs, where
    `truncated` means the reply hit `max_new_tokens` instead of ending by itself. `histories` adds
    earlier chat messages before each prompt (e.g. demonstrations)."""
    histories = histories or [[] for _ in prompts]
    chats = [
        tokenizer.apply_chat_template(writing_chat(prompt, system_prompt, history), tokenize=False, add_generation_prompt=True)
        for prompt, history in zip(prompts, histories)
    ]
    inputs = tokenizer(chats, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False)
    inputs = inputs.to(model.device)
    output = model.generate(
        **inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
    )
    stops = stop_token_ids(model, tokenizer)
    results = []
    for row in output[:, inputs["input_ids"].shape[1] :].tolist():
        ended = any(token in stops for token in row)
        if ended:
            row = row[: next(i for i, token in enumerate(row) if token in stops)]
        results.append((tokenizer.decode(row, skip_special_tokens=True).strip(), not ended))
    return results


def _qualified_name(function: Callable) -> str:
    return f"{getattr(function, '__module__', '?')}.{getattr(function, '__qualname__', repr(function))}"


def settings_path(shard_file: Path) -> Path:
    """Where the settings a shard file was written with are recorded (beside it)."""
    return shard_file.with_name(shard_file.name.removesuffix(".jsonl") + ".settings.json")


def check_resume_settings(shard_file: Path, settings: dict) -> None:
    """Refuse to resume `shard_file` with settings other than those it was written with, or into
    a folder that holds shards of another split (`-of-NNNNN`)."""
    others = {p.name for p in shard_file.parent.glob("targets-*-of-*.jsonl")} - {
        shard_path(shard_file.parent, i, settings["num_shards"]).name for i in range(settings["num_shards"])
    }
    if others:
        raise UserInputError(
            f"holds shards of another run ({sorted(others)[0]}, ...); use the same --num-shards, or another folder",
            path=shard_file.parent,
        )
    check_settings(settings_path(shard_file), settings, write=False)


def _read_records(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as lines:
        return [json.loads(line) for line in lines]


def _check_same_row(path: Path, line: int, record: dict | None, example: dict) -> None:
    """A resumed shard must hold, row for row, what this data would have produced."""
    expected = json.loads(json.dumps(json_fields(example), ensure_ascii=False))
    found = {key: value for key, value in (record or {}).items() if key not in ("target", "truncated")}
    if found != expected:
        changed = sorted(key for key in set(found) | set(expected) if found.get(key) != expected.get(key))
        key = changed[0]
        raise UserInputError(
            f"row {example['index']} was written from other data ({found.get(key)!r} there, {expected.get(key)!r} now); "
            "resume only with the same data and settings, or write into another folder",
            path=path, line=line, field=key,
        )


def generate_targets(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Iterable[dict],
    output_dir: str | Path,
    *,
    prompt: Callable[[dict], str] = semantic_prompt,
    system_prompt: str = NEUTRAL_SYSTEM_PROMPT,
    batch_size: int = 8,
    max_new_tokens: int = MAX_NEW_TOKENS,
    shard: int = 0,
    num_shards: int = 1,
    total: int | None = None,
    demonstration: Callable[[dict], list[dict]] | None = None,
) -> Path:
    """Write `target` and `truncated` for this shard's examples (every `num_shards`-th, starting
    at `shard`) to `output_dir/targets-SSSSS-of-NNNNN.jsonl`, resuming a previous run. Records keep
    their example's fields (audio undecoded) plus `index`, the example's position in `examples`.
    `demonstration(example)` may give chat messages shown before the request (see
    `emotion_demonstration`)."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} is not in 0..{num_shards - 1}")
    path = shard_path(output_folder(output_dir), shard, num_shards)
    settings = {
        "prompt": _qualified_name(prompt), "system_prompt": system_prompt, "batch_size": batch_size,
        "max_new_tokens": max_new_tokens, "num_shards": num_shards,
        "demonstration": _qualified_name(demonstration) if demonstration else None,
    }
    check_resume_settings(path, settings)
    done = completed_batches(path, batch_size)
    written = iter(_read_records(path)) if done else iter(())
    mine = ({**example, "index": index} for index, example in enumerate(examples) if index % num_shards == shard)
    shard_total = None if total is None else len(range(shard, total, num_shards))
    batches = batched(mine, batch_size)
    progress = tqdm(
        total=shard_total, initial=min(done * batch_size, shard_total or done * batch_size), unit="text",
        desc=f"targets shard {shard}/{num_shards}",
    )
    line = 0
    for batch in islice(batches, done):  # generated by an earlier run: from the same rows?
        for example in batch:
            line += 1
            _check_same_row(path, line, next(written, None), example)
    if next(written, None) is not None:
        raise UserInputError(
            "holds more rows than this data gives; resume only with the same data, or write into another folder", path=path
        )
    write_settings(settings_path(path), settings)
    for batch in batches:
        histories = [demonstration(example) for example in batch] if demonstration else None
        replies = continue_texts(
            model, tokenizer, [prompt(example) for example in batch], system_prompt, max_new_tokens, histories
        )
        records = [
            {**json_fields(example), "target": text, "truncated": truncated}
            for example, (text, truncated) in zip(batch, replies)
        ]
        append_batch(path, records)
        progress.update(len(batch))
    progress.close()
    return path


TARGET_FIELDS = ("index", "target", "truncated")


def load_targets(
    output_dir: str | Path,
    refusals: RefusalFilter | None = None,
    drop_refusals: bool = True,
    *,
    required: Sequence[str] = (),
    check_audio: str = "none",
    skip_bad_audio: bool = False,
) -> list[dict]:
    """All shards' records in example order, refusals (by `refusals`, default patterns if None)
    dropped unless `drop_refusals` is False (their count is logged).

    A `UserInputError` names a missing or empty folder, a bad line, and a record without the
    target fields or the `required` ones (e.g. `emotion` for stage 2). `check_audio` ("exists",
    "decode" or "none") checks the records' audio as in `processing.manifests.usable_audio`;
    `skip_bad_audio` leaves records with unusable audio out (counted in the log)."""
    folder = Path(output_dir)
    if not folder.is_dir():
        raise UserInputError("no such targets folder" if not folder.exists() else "is a file, expected a targets folder", path=folder)
    shards = sorted(folder.glob("targets-*-of-*.jsonl"))
    if not shards:
        raise UserInputError("no targets-*-of-*.jsonl files in this folder (write them with `blsp-emo generate-targets`)", path=folder)
    records = []
    for path in shards:
        shard_records, lines = _read_shard(path, (*TARGET_FIELDS, *required))
        if check_audio != "none":
            keep = usable_audio([record.get("audio") for record in shard_records], str(path), check_audio, skip_bad_audio, lines)
            shard_records = [shard_records[i] for i in keep]
        records.extend(shard_records)
    if not records:
        raise UserInputError("the targets files hold no records", path=folder)
    records.sort(key=lambda record: record["index"])
    if not drop_refusals:
        return records
    kept, dropped = (refusals or RefusalFilter()).split(records)
    logger.info("targets: kept %d, dropped %d refusals", len(kept), len(dropped))
    return kept


def _read_shard(path: Path, required: Sequence[str]) -> tuple[list[dict], list[int]]:
    """The complete lines of a shard (a line cut short by a kill is left for the resume), checked."""
    records, lines = [], []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.endswith("\n"):
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise UserInputError(f"not valid JSON ({error.msg})", path=path, line=number) from error
            if not isinstance(record, dict):
                raise UserInputError(f"expected a JSON object, found {type(record).__name__}", path=path, line=number)
            for field in required:
                if record.get(field) is None:
                    hint = (" (targets written without --emotion? stage 2 needs `blsp-emo generate-targets --emotion`)"
                            if field == "emotion" else "")
                    raise UserInputError(("missing" if field not in record else "is null") + hint, path=path, line=number, field=field)
            records.append(record)
            lines.append(number)
    return records, lines
