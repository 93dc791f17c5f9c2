"""The original release's prompts, verbatim, as named presets."""

from collections.abc import Sequence

NEUTRAL_SYSTEM_PROMPT = "You are a helpful assistant."
EMPATHETIC_SYSTEM_PROMPT = (
    "You are a helpful assistant. Your response should fulfill requests with empathy toward user's emotion tone."
)
# Stage 1: the LLM continues a transcript (text in, text out).
SEMANTIC_TARGET_INSTRUCTION = "Continue the following sentence in a coherent style: "
# Stage 2: the LLM continues a transcript given its true emotion (text in, text out).
EMOTION_TARGET_INSTRUCTION = "Continue the following sentence that reflects a '{emotion}' emotion tone in a coherent style: "
# Stage 2: the speech model continues the speech, hearing the emotion itself.
EMOTION_CONTINUATION_INSTRUCTION = "Continue the following sentence based on the conveyed emotion tone in a coherent style: "
# The release listed its five labels in this order in the query.
RELEASE_SER_OPTIONS = ("neutral", "sad", "angry", "happy", "surprise")


def options_phrase(options: Sequence[str]) -> str:
    """`"a, b, or c"` (the release's wording for the label list)."""
    if len(options) < 2:
        raise ValueError(f"an emotion query needs at least two options, got {list(options)}")
    return ", ".join(options[:-1]) + f", or {options[-1]}"


def ser_instruction(options: Sequence[str] = RELEASE_SER_OPTIONS) -> str:
    """The speech-emotion-recognition query that precedes the speech."""
    return (
        "Please identify the emotion tone of the speech provided below. "
        f"Select from the following options: {options_phrase(options)}.\n\nSpeech: "
    )


def emotion_target_instruction(emotion: str) -> str:
    """The stage-2 target-generation instruction for a transcript of the given emotion."""
    return EMOTION_TARGET_INSTRUCTION.format(emotion=emotion)


def system_prompt(empathetic: bool) -> str:
    return EMPATHETIC_SYSTEM_PROMPT if empathetic else NEUTRAL_SYSTEM_PROMPT
