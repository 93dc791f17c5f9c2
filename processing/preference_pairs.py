"""Preference pairs for the optional third stage: for a clip heard in emotion e, the continuation the
LLM wrote for its sentence under e is *chosen*, and one it wrote for the same sentence under another
emotion e' is *rejected*. The material is what stage 2 already has: a manifest of clips (`audio`,
`text`, `emotion`) and the folder `blsp-emo generate-targets --emotion` wrote (one target per
`(text, emotion)`).

A pair teaches something only if its two texts differ and both are real continuations, so refusals
(as `processing.cleaning.RefusalFilter` decides, the filter stage 2 trains without) and texts equal
to the chosen one never form pairs; two other emotions that wrote the same text give one pair.
"""

import logging
import random
from collections.abc import Sequence
from pathlib import Path

from processing.cleaning import RefusalFilter
from processing.errors import UserInputError
from processing.manifests import read_manifest
from processing.target_generation import load_targets

logger = logging.getLogger(__name__)
PAIR_FIELDS = ("audio", "text", "emotion", "chosen", "chosen_truncated", "rejected", "rejected_emotion", "rejected_truncated")


def targets_by_key(records: Sequence[dict], source: str | Path | None = None) -> dict[tuple[str, str], dict]:
    """`{(text, emotion): record}` of stage-2 target records; a `UserInputError` names a key written
    twice with different targets (which one would be the continuation for that emotion?)."""
    table: dict[tuple[str, str], dict] = {}
    for record in records:
        key = (record["text"], record["emotion"])
        if key in table and table[key]["target"] != record["target"]:
            raise UserInputError(
                f"two different targets for text {key[0]!r} in emotion {key[1]!r} (rows {table[key].get('index')} and "
                f"{record.get('index')}); keep one target per sentence and emotion", path=source,
            )
        table[key] = record
    return table


def preference_pairs(
    clips: Sequence[dict],
    targets: Sequence[dict],
    *,
    rejected_per_clip: int | None = None,
    seed: int = 0,
    refusals: RefusalFilter | None = None,
    source: str | Path | None = None,
) -> list[dict]:
    """Pairs (fields `PAIR_FIELDS`) for `clips` (`audio`, `text`, `emotion`) from stage-2 `targets`
    (records with `text`, `emotion`, `target`, `truncated`, refusals *included*: they are recognised
    here by `refusals`, default patterns if None).

    Each clip gives one pair per other emotion whose target for its sentence is usable and differs
    from the chosen one, or `rejected_per_clip` of them drawn with `seed`. A clip whose own target is
    a refusal gives none. A `UserInputError` (naming `source`, the targets) says when a clip's
    sentence has no target for its emotion, or when no pair at all can be formed.
    """
    if rejected_per_clip is not None and rejected_per_clip < 1:
        raise UserInputError(f"must be at least 1 (or unset, for every other emotion), got {rejected_per_clip}",
                             field="rejected_per_clip")
    refusals = refusals or RefusalFilter()
    table = targets_by_key(targets, source)
    emotions = list(dict.fromkeys(record["emotion"] for record in targets))
    rng = random.Random(seed)
    pairs, refused_clips = [], 0
    for row, clip in enumerate(clips, start=1):
        chosen = table.get((clip["text"], clip["emotion"]))
        if chosen is None:
            raise UserInputError(
                f"no stage-2 target for clip {row}'s text {clip['text']!r} in its emotion {clip['emotion']!r} (write targets "
                "for every sentence and emotion of the manifest with `blsp-emo generate-targets --emotion`)", path=source,
            )
        if refusals.is_refusal(chosen["target"]):
            refused_clips += 1
            continue
        candidates, seen = [], {chosen["target"].strip()}
        for emotion in emotions:
            other = table.get((clip["text"], emotion))
            if other is None or emotion == clip["emotion"] or refusals.is_refusal(other["target"]):
                continue
            if other["target"].strip() not in seen:
                seen.add(other["target"].strip())
                candidates.append(other)
        if rejected_per_clip is not None and len(candidates) > rejected_per_clip:
            candidates = rng.sample(candidates, rejected_per_clip)
        pairs.extend(
            {
                "audio": clip["audio"], "text": clip["text"], "emotion": clip["emotion"],
                "chosen": chosen["target"], "chosen_truncated": bool(chosen.get("truncated")),
                "rejected": rejected["target"], "rejected_emotion": rejected["emotion"],
                "rejected_truncated": bool(rejected.get("truncated")),
            }
            for rejected in candidates
        )
    logger.info("preference pairs: %d from %d clips (%d clips' own targets are refusals)", len(pairs), len(clips), refused_clips)
    if not pairs:
        raise UserInputError(
            f"no preference pairs from {len(clips)} clips: every clip's own target is a refusal, or its sentence has no "
            "other usable continuation that differs from it", path=source,
        )
    return pairs


def load_preference_pairs(
    manifest: str | Path,
    targets: str | Path,
    *,
    rejected_per_clip: int | None = None,
    seed: int = 0,
    check_audio: str = "exists",
    skip_bad_audio: bool = False,
) -> list[dict]:
    """`preference_pairs` for the clips of a JSONL `manifest` (`audio`, `text`, `emotion`) and the
    stage-2 targets folder `targets`; file problems raise a `UserInputError` naming the file and line."""
    clips = read_manifest(manifest, ("audio", "text", "emotion"), check_audio=check_audio, skip_bad_audio=skip_bad_audio)
    records = load_targets(targets, drop_refusals=False, required=("text", "emotion"))
    return preference_pairs(clips, records, rejected_per_clip=rejected_per_clip, seed=seed, source=targets)
