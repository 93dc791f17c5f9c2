"""What the package's pipelines share: transformers' own iteration over inputs, one audio item at a time.

Lists, generators, `datasets` and `KeyDataset(dataset, "audio")`, `batch_size` and `num_workers` behave
as in every transformers pipeline (the base `Pipeline.__call__`). Two things differ from the base
iteration: each item carries its index, so an error names the item that failed; and batches are
collated by the pipeline itself, since one item may span several 30-s windows (transformers' collate
keeps one row per item).
"""

import itertools
from collections.abc import Sized
from typing import Any, NamedTuple

import numpy as np
from torch.utils.data import DataLoader, Dataset
from transformers import Pipeline
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

from .audio_loading import AudioInputError, describe_audio_item, load_audio
from .speech_activity import has_speech
from .speech_lengths import MIN_SAMPLES

# `errors=`: "raise" (default, as transformers) stops at the first unusable item; "return" puts
# {"error": message} in that item's result and goes on with the others.
ERROR_MODES = ("raise", "return")
# `detect_speech=`: on by default, so that noise, silence and music get the result `no_speech` instead of
# an invented answer; `detect_speech=False` runs the model on every item.
DETECT_SPEECH = True


class IndexedInput(NamedTuple):
    """One pipeline input and its position in the inputs (None for a single input)."""

    index: int | None
    value: Any


class IndexedInputs(Dataset):
    """A sized collection of inputs whose items come with their index."""

    def __init__(self, inputs: Any):
        self.inputs = inputs

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitem__(self, index: int) -> IndexedInput:
        return IndexedInput(index, self.inputs[index])


def indexed_stream(inputs: Any):
    """The items of an iterable (a generator, an iterable dataset) with their index."""
    for index, value in enumerate(inputs):
        yield IndexedInput(index, value)


def item_name(item: Any, index: int | None) -> str:
    """How errors name an input: `audio item 3`, `audio item 3 (clip.wav)`, or the path of a single input."""
    name = describe_audio_item(item, index)
    return name if index is None or name.startswith("audio item") else f"audio item {index} ({name})"


class BlspEmoPipeline(Pipeline):
    """Base of the BLSP-Emo pipelines: per-item `preprocess`, then `collate` (a list of preprocessed
    items → one model batch), `_forward` on the batch, and `postprocess` → one result per item."""

    def get_iterator(
        self, inputs, num_workers: int, batch_size: int, preprocess_params, forward_params, postprocess_params
    ):
        if isinstance(inputs, Sized):
            dataset = PipelineDataset(IndexedInputs(inputs), self.preprocess, preprocess_params)
        else:
            num_workers = min(num_workers, 1)  # as transformers: an iterable cannot be split between workers
            dataset = PipelineIterator(indexed_stream(inputs), self.preprocess, preprocess_params)
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=self.collate)
        batches = PipelineIterator(loader, self.forward, forward_params)
        return itertools.chain.from_iterable(PipelineIterator(batches, self.postprocess, postprocess_params))

    def run_single(self, inputs, preprocess_params, forward_params, postprocess_params):
        batch = self.collate([self.preprocess(IndexedInput(None, inputs), **preprocess_params)])
        return self.postprocess(self.forward(batch, **forward_params), **postprocess_params)[0]

    def load_clip(self, inputs: Any, sampling_rate: int | None, errors: str, detect_speech: bool = DETECT_SPEECH) -> dict:
        """`{"clip": 16-kHz waveform}` of one input, `{"no_speech": True}` when `detect_speech` finds no
        speech in it (see `speech_activity`), or `{"error": message}` when it is unusable and
        `errors="return"`; with `errors="raise"` the `AudioInputError` names the item."""
        index, item = inputs if isinstance(inputs, IndexedInput) else (None, inputs)
        name = item_name(item, index)
        try:
            clip = load_audio(item, sampling_rate=sampling_rate, name=name)
            if len(clip) < MIN_SAMPLES:
                raise AudioInputError(f"{name}: {len(clip)} samples at 16 kHz is too short (at least {MIN_SAMPLES}, 25 ms)")
        except AudioInputError as error:
            if errors == "return":
                return {"error": str(error)}
            raise
        if detect_speech and not has_speech(clip):
            return {"no_speech": True}
        return {"clip": clip}

    @staticmethod
    def check_errors_mode(errors: str | None) -> None:
        if errors is not None and errors not in ERROR_MODES:
            raise ValueError(f"errors={errors!r}: expected one of {ERROR_MODES}")

    @staticmethod
    def split_skipped(items: list[dict]) -> tuple[list[dict | None], list[np.ndarray]]:
        """Per item, why the model skips it (`{"error": message}` or `{"no_speech": True}`; None when it
        runs), and the clips of the items it runs, in order."""
        skipped = [None if "clip" in item else {key: item[key] for key in ("error", "no_speech") if key in item} for item in items]
        return skipped, [item["clip"] for item in items if "clip" in item]


__all__ = ["BlspEmoPipeline", "DETECT_SPEECH", "ERROR_MODES", "IndexedInput"]
