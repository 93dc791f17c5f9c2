"""An LLM judge that answers by choosing one of a few words, scored from the probabilities of those
words' first tokens (so it never gives an unparseable answer), and the measures built on it: the
emotion a reply expresses, and whether a reply is about what was said (rather than about other
things that were said).

Each measure comes with its calibration: the same judge on texts whose answer is known (the
writer's emotion-aware targets; a sentence's own continuation vs another sentence's).
"""

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from trainers.evaluation.shared_prefix import PrefixCache, logits_after_shared_prefix, run_prefix, shared_prefix_length

EMOTION_QUESTION = (
    'Here is a short text:\n"{reply}"\n\n'
    "Which emotion does the writer of this text express? Answer with exactly one word from: {options}."
)
# The reply comes first so that the questions about one reply share it as a prefix (computed once).
TOPIC_QUESTION = (
    'Here is a text:\n"{reply}"\n\nSomeone had said: "{transcript}"\n\n'
    "Is the text about the same subject as what was said? Answer with exactly one word: yes or no."
)
TOPIC_RIVALS = 3  # other transcripts each reply is compared against (chance: 1 in 4)


@dataclass
class WordChoiceJudge:
    """A chat LLM that picks one of `options` for each question: the option whose first token is most
    probable as the first token of the answer (probabilities renormalised over the options)."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    batch_size: int = 8

    def first_token_ids(self, options: Sequence[str]) -> list[int]:
        ids = [self.tokenizer(option, add_special_tokens=False)["input_ids"][0] for option in options]
        if len(set(ids)) != len(ids):
            raise ValueError(f"options {list(options)} do not start with distinct tokens for this judge's tokenizer")
        return ids

    @torch.inference_mode()
    def choose(
        self, questions: Sequence[str], options: Sequence[str], desc: str = "judging", group_size: int | None = None
    ) -> list[dict[str, float]]:
        """Per question, `{option: probability}` over `options`. Questions go in batches of `batch_size`,
        or of `group_size` when each run of that many consecutive questions shares a long prefix (one
        reply asked about several transcripts)."""
        option_ids = torch.tensor(self.first_token_ids(options))
        step = group_size or self.batch_size
        rows = [self.chat_tokens(question) for question in questions]
        # The start all questions share (system prompt, instruction) runs once for the whole set.
        common = shared_prefix_length(rows) if len(rows) > step else 0
        prefix_cache = run_prefix(self.model, rows[0][:common]) if common else None
        results = []
        for start in tqdm(range(0, len(rows), step), desc=desc, unit="batch", disable=len(rows) <= step):
            logits = self.next_token_logits(rows[start : start + step], prefix_cache)
            probabilities = logits[:, option_ids.to(logits.device)].softmax(-1).tolist()
            results += [dict(zip(options, row)) for row in probabilities]
        return results

    def chat_tokens(self, question: str) -> list[int]:
        """The token ids of `question` as a user turn of the judge's chat, ready for its answer."""
        chat = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
        return self.tokenizer(chat, add_special_tokens=False)["input_ids"]

    def next_token_logits(self, rows: Sequence[Sequence[int]], prefix_cache: PrefixCache | None = None) -> torch.Tensor:
        """`(len(rows), vocab)` float logits of the token after each chat's tokens; the rows' common start
        runs once (`logits_after_shared_prefix`), after `prefix_cache` when given."""
        last = [[len(row) - 1] for row in rows]
        return torch.cat(
            logits_after_shared_prefix(self.model, rows, last, self.tokenizer.pad_token_id, prefix_cache=prefix_cache)
        )


def best(scores: dict[str, float]) -> str:
    return max(scores, key=scores.get)


def judge_emotions(judge: WordChoiceJudge, replies: Sequence[str], labels: Sequence[str]) -> list[str]:
    """The emotion label the judge reads in each reply."""
    options = ", ".join(labels)
    questions = [EMOTION_QUESTION.format(reply=reply.strip(), options=options) for reply in replies]
    return [best(scores) for scores in judge.choose(questions, labels, desc="judging emotion")]


def judge_on_topic(
    judge: WordChoiceJudge, transcripts: Sequence[str], replies: Sequence[str], rivals: int = TOPIC_RIVALS
) -> list[bool]:
    """Whether each reply is about its own transcript rather than about other transcripts.

    Small judges say "yes" to most pairs, generic or not ("I'm so sorry for your loss.", "The tone of
    the sentence is neutral."), so the yes-probability is compared, not thresholded: a reply is on
    topic when the judge gives its own transcript a strictly higher yes-probability than each of
    `rivals` other distinct transcripts of the set (the next ones, cyclically). A reply that would fit
    any sentence is on topic only by chance, about `1 / (rivals + 1)` of the time (`on_topic_chance`).
    """
    return on_topic_verdicts(topic_scores(judge, transcripts, replies, rivals), transcripts)


def topic_scores(
    judge: WordChoiceJudge, transcripts: Sequence[str], replies: Sequence[str], rivals: int = TOPIC_RIVALS
) -> list[dict[str, float]]:
    """Per reply, the judge's yes-probability that it is about its own transcript and about each of
    `rivals` other distinct transcripts of the set (the next ones, cyclically)."""
    if not transcripts:
        return []
    distinct = list(dict.fromkeys(t.strip() for t in transcripts))
    position = {transcript: index for index, transcript in enumerate(distinct)}
    width = _compared_transcripts(distinct, rivals)
    compared = [
        [distinct[(position[transcript.strip()] + k) % len(distinct)] for k in range(width)] for transcript in transcripts
    ]
    questions = [
        TOPIC_QUESTION.format(transcript=other, reply=reply.strip())
        for others, reply in zip(compared, replies)
        for other in others
    ]
    yes = [scores["yes"] for scores in judge.choose(questions, ["yes", "no"], desc="judging topic", group_size=width)]
    return [dict(zip(others, yes[row * width : (row + 1) * width])) for row, others in enumerate(compared)]


def on_topic_verdicts(scores: Sequence[dict[str, float]], transcripts: Sequence[str], normalized: bool = False) -> list[bool]:
    """On topic: the reply's own transcript has a strictly higher yes-probability than each rival.

    `normalized` first subtracts from each transcript's yes-probabilities their mean over all replies
    scored against it: some sentences draw "yes" for any reply, and a reply that fits any sentence
    (the same for every clip) would otherwise be on topic for the clips of the sentence the judge
    favours. Normalized, identical replies tie and are never on topic; varied replies unrelated to the
    sentence are on topic about `1 / (rivals + 1)` of the time."""
    bias = {}
    if normalized:
        values = defaultdict(list)
        for row in scores:
            for transcript, value in row.items():
                values[transcript].append(value)
        bias = {transcript: sum(scored) / len(scored) for transcript, scored in values.items()}
    verdicts = []
    for row, own in zip(scores, transcripts):
        adjusted = {transcript: value - bias.get(transcript, 0.0) for transcript, value in row.items()}
        own_score = adjusted[own.strip()]
        verdicts.append(all(own_score > value for transcript, value in adjusted.items() if transcript != own.strip()))
    return verdicts


def _compared_transcripts(distinct: Sequence[str], rivals: int) -> int:
    """How many transcripts each reply is scored against: its own and up to `rivals` others."""
    return min(rivals, len(distinct) - 1) + 1


def on_topic_chance(transcripts: Sequence[str], rivals: int = TOPIC_RIVALS) -> float:
    """The on-topic rate of replies that fit any transcript equally (ties aside): one in `rivals + 1`."""
    return 1 / _compared_transcripts(set(t.strip() for t in transcripts), rivals)


def binomial_tail(successes: int, trials: int, chance: float) -> float:
    """P(X ≥ successes) for X ~ Binomial(trials, chance): how likely so many hits are by luck."""
    return sum(math.comb(trials, k) * chance**k * (1 - chance) ** (trials - k) for k in range(successes, trials + 1))


def emotion_agreement(judged: Sequence[str], truth: Sequence[str], chance: float) -> dict:
    """How often the judged emotion is the true one, with the one-sided binomial p-value against chance."""
    hits = sum(j == t for j, t in zip(judged, truth))
    return {
        "accuracy": hits / max(len(truth), 1),
        "clips": len(truth),
        "p_value": binomial_tail(hits, len(truth), chance),
    }
