"""The demo's judged measures of what the models say: the emotion a judge reads in each continuation
(against the clip's true emotion), whether it is on topic, how often it loops; each beside the
judge's calibration on texts whose answer is known."""

from collections.abc import Sequence

from trainers.evaluation.judge import (
    WordChoiceJudge,
    emotion_agreement,
    judge_emotions,
    judge_on_topic,
    on_topic_chance,
    on_topic_verdicts,
    topic_scores,
)
from trainers.evaluation.replies import repetition_share

# Replies that would fit any sentence, as small models give them: the judge should not find them on
# topic more often than chance.
GENERIC_REPLIES = (
    "I'm so sorry for your loss.",
    "That's wonderful news! I'm so happy for you.",
    "The tone of the sentence is a mix of a positive and a negative emotion.",
    "Oh no, that sounds really frustrating.",
)


def judge_replies(judge: WordChoiceJudge, rows: Sequence[dict], replies: dict[str, list[str]], labels: Sequence[str]) -> dict:
    """Per reply set (e.g. stage 2, stage 1 only, cascade): judged emotion agreement with the clips'
    true emotions (with its binomial p-value against chance), on-topic rate (plain and normalized per
    transcript, `on_topic_verdicts`; the judge's yes-probabilities in `topic_scores`) and repetition
    share."""
    truth = [row["emotion"] for row in rows]
    transcripts = [row["text"] for row in rows]
    results = {}
    for name, texts in replies.items():
        emotions = judge_emotions(judge, texts, labels)
        scores = topic_scores(judge, transcripts, texts)
        on_topic = on_topic_verdicts(scores, transcripts)
        normalized = on_topic_verdicts(scores, transcripts, normalized=True)
        results[name] = {
            "emotion": emotion_agreement(emotions, truth, 1 / len(labels)),
            "on_topic": sum(on_topic) / max(len(on_topic), 1),
            "on_topic_normalized": sum(normalized) / max(len(normalized), 1),
            "on_topic_chance": on_topic_chance(transcripts),
            "repetition": repetition_share(texts),
            "judged_emotions": emotions,
            "judged_on_topic": on_topic,
            "topic_scores": scores,
        }
    return results


def judge_calibration(
    judge: WordChoiceJudge,
    sentences: Sequence[str],
    emotion_targets: dict[tuple[str, str], str],
    continuations: dict[str, str],
    labels: Sequence[str],
) -> dict:
    """The judge on texts whose answer is known: the writer's emotion-aware targets of `sentences`
    (labelled with the emotion they were written for), each sentence's own continuation vs the next
    sentence's (on topic / off topic) and replies that fit any sentence (`GENERIC_REPLIES`: chance)."""
    pairs = [(text, label) for text in sentences for label in labels if (text, label) in emotion_targets]
    judged = judge_emotions(judge, [emotion_targets[pair] for pair in pairs], labels)
    known = [text for text in sentences if text in continuations]
    shifted = known[1:] + known[:1]
    own = judge_on_topic(judge, known, [continuations[text] for text in known])
    other = judge_on_topic(judge, known, [continuations[text] for text in shifted]) if len(known) > 1 else []
    generic = judge_on_topic(judge, known, [GENERIC_REPLIES[i % len(GENERIC_REPLIES)] for i in range(len(known))])
    return {
        "writer_targets_emotion": emotion_agreement(judged, [label for _, label in pairs], 1 / len(labels)),
        "on_topic_own_continuation": sum(own) / max(len(own), 1),
        "on_topic_other_sentence": sum(other) / max(len(other), 1) if other else None,
        "on_topic_generic_reply": sum(generic) / max(len(generic), 1),
        "on_topic_chance": on_topic_chance(known) if known else None,
        "sentences": len(known),
    }
