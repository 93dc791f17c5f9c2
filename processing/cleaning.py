"""Dropping LLM-written targets that are refusals rather than continuations."""

import re
from collections.abc import Iterable, Sequence

# The release's filters: prefixes of a refusal, and phrases anywhere in it (case-insensitive).
DEFAULT_REFUSAL_PREFIXES = ("I'm sorry, but I cannot", "I'm sorry, but I'm not sure")
DEFAULT_REFUSAL_PHRASES = ("as an ai language model", "i'm sorry, but i", "i'm not sure what you")


class RefusalFilter:
    """Decides whether a generated target is a refusal. Patterns are configurable."""

    def __init__(
        self,
        prefixes: Sequence[str] = DEFAULT_REFUSAL_PREFIXES,
        phrases: Sequence[str] = DEFAULT_REFUSAL_PHRASES,
    ):
        self.prefixes = tuple(prefixes)
        self.phrase_pattern = re.compile("|".join(re.escape(p) for p in phrases), re.IGNORECASE) if phrases else None

    def is_refusal(self, text: str) -> bool:
        stripped = text.strip()
        if stripped.startswith(self.prefixes):
            return True
        return bool(self.phrase_pattern and self.phrase_pattern.search(stripped))

    def split(self, records: Iterable[dict], field: str = "target") -> tuple[list[dict], list[dict]]:
        """Records whose `field` is kept, and those dropped as refusals."""
        kept, dropped = [], []
        for record in records:
            (dropped if self.is_refusal(record[field]) else kept).append(record)
        return kept, dropped
