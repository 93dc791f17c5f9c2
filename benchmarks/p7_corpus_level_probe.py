"""P7: how much of a synthetic corpus's emotion survives when loudness says nothing.

For a corpus folder (`train/validation/test.jsonl` as `synthesize_corpus` writes them), pools the
frozen bundled Whisper tiny.en encoder's hidden states of each clip (mean and standard deviation over
the real frames, of the last layer and of a middle layer; the variable-length path the model uses) and
trains a small classifier on the train split twice:

- "plain": on the training clips as synthesized;
- "level": on `--copies` copies of every training clip, each at a random peak level
  (`RandomLevel`'s default -35 … -1 dBFS), so that loudness carries no information.

Each is tested on the held-out test split (unseen sentences and voices) as synthesized and with every
clip peak-normalized (`peak_normalize`, -1 dBFS); validation (unseen sentences, seen voices) is
printed too. The last line is the level-free accuracy (level-trained classifier, peak-normalized
test clips) against the as-synthesized baseline (plain classifier, clips as synthesized).

    python benchmarks/p7_corpus_level_probe.py /tmp/corpus [--mlp] [--features last] [--wer test,validation]

Features are cached per (audio file, level) in `<corpus>/.p7_features.pt`. `--wer SPLITS` also
transcribes those splits (as synthesized) greedily with the same Whisper tiny.en and prints the word
error rate per engine × emotion, the intelligibility check.
"""

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from modeling_blsp_emo.speech_encoder import encode_variable_length
from modeling_blsp_emo.speech_lengths import SAMPLING_RATE
from processing.augmentation import RandomLevel, peak_normalize
from processing.synthetic.corpus_stats import word_errors
from processing.synthetic.tts_engines import EMOTIONS

ENCODER = "bundled:whisper-tiny.en"
MIDDLE_LAYER = 2  # output of the 2nd of tiny's 4 encoder layers
TEST_PEAK_DBFS = -1.0
# Slices of the cached feature vector [last mean, last std, middle mean, middle std] (d_model each).
FEATURE_SETS = {
    "last+middle": lambda d: slice(0, 4 * d),
    "last": lambda d: slice(0, 2 * d),
    "last-mean": lambda d: slice(0, d),
}


def read_rows(corpus: Path, split: str) -> list[dict]:
    with open(corpus / f"{split}.jsonl", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


class FeatureCache:
    """Pooled encoder features per (audio path, level key); level key "" = as synthesized,
    "peak<dBFS>" = peak-normalized to that level."""

    def __init__(self, corpus: Path):
        from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

        from trainers.checkpoints.bundled import resolve_model_spec

        self.path = corpus / ".p7_features.pt"
        self.store: dict[str, torch.Tensor] = torch.load(self.path) if self.path.exists() else {}
        self.dirty = False
        self.model_dir = resolve_model_spec(ENCODER)
        self.extractor = WhisperFeatureExtractor.from_pretrained(self.model_dir)
        self.whisper = WhisperForConditionalGeneration.from_pretrained(self.model_dir).eval()
        self.encoder = self.whisper.model.encoder
        self.middle: list[torch.Tensor] = []
        self.encoder.layers[MIDDLE_LAYER - 1].register_forward_hook(lambda m, i, o: self.middle.append(o[0] if isinstance(o, tuple) else o))

    @torch.inference_mode()
    def encode(self, waveform: np.ndarray) -> torch.Tensor:
        mel = self.extractor(waveform, sampling_rate=SAMPLING_RATE, padding="longest", return_tensors="pt").input_features
        frames = torch.tensor([mel.shape[-1]])
        self.middle.clear()
        last, lengths = encode_variable_length(self.encoder, mel, frames)
        n = int(lengths[0])
        pooled = []
        for states in (last[0, :n], self.middle[0][0, :n]):
            pooled += [states.mean(0), states.std(0)]
        return torch.cat(pooled)

    def get(self, audio: str, level: float | None) -> torch.Tensor:
        key = f"{audio}|{'' if level is None else f'peak{level:.2f}'}"
        if key not in self.store:
            waveform, rate = sf.read(audio, dtype="float32")
            assert rate == SAMPLING_RATE, (audio, rate)
            if level is not None:
                waveform = peak_normalize(waveform, level)
            self.store[key] = self.encode(waveform)
            self.dirty = True
        return self.store[key]

    def save(self) -> None:
        if self.dirty:
            torch.save(self.store, self.path)
            self.dirty = False


def train_classifier(x: torch.Tensor, y: torch.Tensor, mlp: bool, weight_decay: float, seed: int = 0):
    """Standardized features → logistic regression (or a 256-unit MLP), full-batch Adam."""
    torch.manual_seed(seed)
    mean, std = x.mean(0), x.std(0) + 1e-5
    dims = x.shape[1]
    if mlp:
        net = torch.nn.Sequential(torch.nn.Dropout(0.2), torch.nn.Linear(dims, 256), torch.nn.GELU(),
                                  torch.nn.Dropout(0.2), torch.nn.Linear(256, len(EMOTIONS)))  # fmt: skip
    else:
        net = torch.nn.Sequential(torch.nn.Dropout(0.1), torch.nn.Linear(dims, len(EMOTIONS)))
    optimizer = torch.optim.AdamW(net.parameters(), lr=3e-3, weight_decay=weight_decay)
    xs = (x - mean) / std
    net.train()
    for _ in range(400):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(net(xs), y)
        loss.backward()
        optimizer.step()
    net.eval()

    def predict(features: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return net((features - mean) / std).argmax(-1)

    return predict


def confusion(y: torch.Tensor, predicted: torch.Tensor) -> str:
    matrix = np.zeros((len(EMOTIONS), len(EMOTIONS)), dtype=int)
    for truth, guess in zip(y.tolist(), predicted.tolist()):
        matrix[truth, guess] += 1
    width = max(len(e) for e in EMOTIONS)
    lines = [" " * (width + 2) + " ".join(f"{e[:5]:>5}" for e in EMOTIONS) + "   (rows: truth)"]
    lines += [f"{EMOTIONS[i]:>{width}}  " + " ".join(f"{v:5d}" for v in row) for i, row in enumerate(matrix)]
    return "\n".join(lines)


def word_error_table(corpus: Path, splits: list[str], model_dir: str) -> None:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    processor = WhisperProcessor.from_pretrained(model_dir)
    model = WhisperForConditionalGeneration.from_pretrained(model_dir).eval()
    errors = defaultdict(lambda: np.zeros(2, dtype=np.int64))
    worst = []
    for split in splits:
        rows = read_rows(corpus, split)
        for start in range(0, len(rows), 8):
            batch = rows[start : start + 8]
            clips = [sf.read(corpus / r["audio"], dtype="float32")[0] for r in batch]
            features = processor(clips, sampling_rate=SAMPLING_RATE, return_tensors="pt").input_features
            with torch.inference_mode():
                texts = processor.batch_decode(model.generate(features, max_new_tokens=96), skip_special_tokens=True)
            for row, text in zip(batch, texts):
                e, n = word_errors(row["text"], text.strip())
                engine = row["speaker"].split(":")[0]
                for key in ((engine, row["emotion"]), (engine, "all"), ("all", row["emotion"]), ("all", "all")):
                    errors[key] += (e, n)
                worst.append((e / max(n, 1), row["speaker"], row["emotion"], row["text"], text.strip()))
    print(f"\nWhisper tiny.en WER on {'+'.join(splits)} (as synthesized), engine x emotion:")
    engines = sorted({k[0] for k in errors} - {"all"}) + ["all"]
    print(f"{'':>10} " + " ".join(f"{e[:8]:>8}" for e in [*EMOTIONS, "all"]))
    for engine in engines:
        cells = [errors[(engine, e)] for e in [*EMOTIONS, "all"]]
        print(f"{engine:>10} " + " ".join(f"{c[0] / c[1]:8.3f}" if c[1] else f"{'-':>8}" for c in cells))
    if ("all", "all") not in errors:
        return
    print("worst clips:")
    for rate, speaker, emotion, reference, hypothesis in sorted(worst, reverse=True)[:5]:
        print(f"  {rate:.2f} {speaker} {emotion}: {reference!r} -> {hypothesis!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--copies", type=int, default=4, help="random-level copies of each training clip")
    parser.add_argument("--mlp", action="store_true", help="a one-hidden-layer MLP instead of logistic regression")
    parser.add_argument("--weight-decay", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--classifier-seeds", type=int, default=3, help="accuracies are the mean over this many classifier seeds")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--features", choices=list(FEATURE_SETS), default="last+middle",
                        help="which pooled statistics the classifier sees (what a head reading the encoder could use)")
    parser.add_argument("--wer", default="", help="comma-separated splits to transcribe for the word error rate")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    started = time.perf_counter()

    corpus = args.corpus
    cache = FeatureCache(corpus)
    rows = {split: read_rows(corpus, split) for split in ("train", "validation", "test")}
    label = {e: i for i, e in enumerate(EMOTIONS)}
    path = lambda row: str(corpus / row["audio"])  # noqa: E731

    columns = FEATURE_SETS[args.features](cache.encoder.config.d_model)

    def stack(split: str, level: float | None = None):
        return (torch.stack([cache.get(path(r), level)[columns] for r in rows[split]]),
                torch.tensor([label[r["emotion"]] for r in rows[split]]))  # fmt: skip

    x_train, y_train = stack("train")
    levels = RandomLevel(seed=args.seed)
    x_level, y_level = [], []
    for row in rows["train"]:
        for _ in range(args.copies):
            drawn = float(levels.random.uniform(levels.min_dbfs, levels.max_dbfs))
            x_level.append(cache.get(path(row), round(drawn, 2))[columns])
            y_level.append(label[row["emotion"]])
    x_level, y_level = torch.stack(x_level), torch.tensor(y_level)
    evaluations = {}
    for split in ("test", "validation"):
        evaluations[(split, "as synthesized")] = stack(split)
        evaluations[(split, "peak-normalized")] = stack(split, TEST_PEAK_DBFS)
    cache.save()
    feature_seconds = time.perf_counter() - started

    speakers = {s: sorted({r["speaker"] for r in rows[s]}) for s in rows}
    print(f"corpus {corpus}: " + ", ".join(f"{s} {len(rows[s])} clips" for s in rows) + f"; test voices {speakers['test']}")
    print(f"features {args.features}, {x_train.shape[1]} dims ({feature_seconds:.0f} s incl. encoding); classifier: "
          f"{'MLP' if args.mlp else 'logistic regression'}, weight decay {args.weight_decay}, "
          f"accuracies: mean of {args.classifier_seeds} classifier seeds (confusions: the first)")  # fmt: skip
    accuracy = defaultdict(float)
    predictions = {}
    for name, (x, y) in (("plain", (x_train, y_train)), ("level", (x_level, y_level))):
        for seed in range(args.seed, args.seed + args.classifier_seeds):
            predict = train_classifier(x, y, args.mlp, args.weight_decay, seed)
            for (split, condition), (xe, ye) in evaluations.items():
                predicted = predict(xe)
                accuracy[(name, split, condition)] += float((predicted == ye).float().mean()) / args.classifier_seeds
                predictions.setdefault((name, split, condition), (ye, predicted))  # the first seed's
    print(f"\n{'classifier':<32}{'test as synth':>14}{'test peak-norm':>15}{'val as synth':>13}{'val peak-norm':>14}")
    for name, title in (("plain", "plain (as synthesized)"), ("level", f"level ({args.copies} random-peak copies)")):
        cells = [accuracy[(name, s, c)] for s in ("test", "validation") for c in ("as synthesized", "peak-normalized")]
        print(f"{title:<32}" + "".join(f"{v:>{w}.1%}" for v, w in zip(cells, (14, 15, 13, 14))))
    for key in (("level", "test", "peak-normalized"), ("level", "test", "as synthesized"), ("plain", "test", "peak-normalized")):
        print(f"\nconfusion (first seed), {key[0]} classifier, {key[1]} clips {key[2]}:")
        print(confusion(*predictions[key]))
    test_speakers = [r["speaker"] for r in rows["test"]]
    for name in ("plain", "level"):
        cells = []
        for condition in ("as synthesized", "peak-normalized"):
            truth, guess = predictions[(name, "test", condition)]
            for speaker in speakers["test"]:
                hits = [bool(t == g) for t, g, s in zip(truth.tolist(), guess.tolist(), test_speakers) if s == speaker]
                cells.append(f"{speaker} {condition}: {sum(hits)}/{len(hits)}")
        print(f"per test voice (first seed), {name}: " + "; ".join(cells))
    if args.wer:
        word_error_table(corpus, args.wer.split(","), cache.model_dir)
    baseline = accuracy[("plain", "test", "as synthesized")]
    level_free = accuracy[("level", "test", "peak-normalized")]
    print(f"\nlevel-free accuracy {level_free:.1%} (level-trained, test peak-normalized) / as-synthesized "
          f"baseline {baseline:.1%} (plain, test as synthesized) = ratio {level_free / baseline:.3f}; "
          f"level-trained as synthesized {accuracy[('level', 'test', 'as synthesized')]:.1%}; "
          f"{time.perf_counter() - started:.0f} s")  # fmt: skip


if __name__ == "__main__":
    main()
