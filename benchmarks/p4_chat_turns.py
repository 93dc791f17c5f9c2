"""P4: per-turn time of a multi-turn spoken chat, KV cache reused vs the whole conversation re-run.

`BlspEmoChat` keeps the conversation's KV cache, so a new turn encodes only its own audio and
computes only its own tokens. The baseline (`reuse_cache=False`, what the original release's demo
did) re-encodes every past clip and re-runs the whole conversation on each turn. Both chats get the
same turns and produce the same token ids (checked on every turn); each turn generates exactly
`--new-tokens` tokens (min = max), so the work per turn is fixed.

The model is built from the offline bundled parts (Whisper tiny.en encoder, SmolLM2-135M-Instruct;
adapter untrained, so the replies are not meaningful): real sizes, real tokenizer and chat template.

    python benchmarks/p4_chat_turns.py --turns 6 --seconds 3 --new-tokens 24 --runs 3 --threads 1

On a machine shared with other jobs, pass `--threads 1`: two OpenMP threads competing with other
processes for two cores give erratic timings (small workloads suffer most).
"""

import argparse
import statistics

import numpy as np
import torch

from modeling_blsp_emo.speech_lengths import SAMPLING_RATE
from trainers.checkpoints.builder import build_blsp_emo
from trainers.checkpoints.bundled.registry import resolve_model_spec
from trainers.inference.chat import BlspEmoChat

INSTRUCTION = "Please answer what I say: "


def spoken_clip(seconds: float, seed: int) -> np.ndarray:
    """A tone with a little noise standing in for one spoken turn (pitch set by `seed`)."""
    time_axis = np.arange(int(seconds * SAMPLING_RATE)) / SAMPLING_RATE
    noise = 0.05 * np.random.default_rng(seed).standard_normal(len(time_axis))
    return (0.3 * np.sin(2 * np.pi * (180 + 30 * seed) * time_axis) + noise).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--encoder", default="bundled:whisper-tiny.en", help="Whisper: hub id, folder or bundled:NAME")
    parser.add_argument("--llm", default="bundled:smollm2-135m-instruct", help="causal LM: hub id, folder or bundled:NAME")
    parser.add_argument("--turns", type=int, default=6, help="turns per conversation")
    parser.add_argument("--seconds", type=float, default=3.0, help="audio per spoken turn, in seconds")
    parser.add_argument("--text-every", type=int, default=0, help="make every N-th turn a text turn (0: all spoken)")
    parser.add_argument("--new-tokens", type=int, default=24, help="tokens generated per turn")
    parser.add_argument("--runs", type=int, default=3, help="timed conversations per mode")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model, processor = build_blsp_emo(resolve_model_spec(args.encoder), resolve_model_spec(args.llm))
    model.eval()
    settings = dict(
        max_new_tokens=args.new_tokens, max_audio_seconds=max(30.0, args.seconds),
        generate_kwargs=dict(do_sample=False, min_new_tokens=args.new_tokens),
    )  # fmt: skip
    chats = {
        "reuse": BlspEmoChat(model, processor, **settings),
        "re-encode": BlspEmoChat(model, processor, reuse_cache=False, **settings),
    }
    turns = [
        dict(text=f"Turn {i + 1}.")
        if args.text_every and (i + 1) % args.text_every == 0
        else dict(text=INSTRUCTION, audio=spoken_clip(args.seconds, i), sampling_rate=SAMPLING_RATE)
        for i in range(args.turns)
    ]
    # One untimed turn first: the first calls pay for lazy initialisation.
    for chat in chats.values():
        chat.send(**turns[0])
        chat.reset()

    times = {name: [[] for _ in turns] for name in chats}
    stats = [{} for _ in turns]
    for _ in range(args.runs):
        for chat in chats.values():
            chat.reset()
        for index, turn in enumerate(turns):
            # Interleaved turn by turn, so that a change in machine load affects both modes alike.
            results = {name: chat.send(**turn) for name, chat in chats.items()}
            if results["reuse"].reply_ids != results["re-encode"].reply_ids:
                raise SystemExit(f"turn {index + 1}: the replies differ between reuse and re-encode")
            for name, result in results.items():
                times[name][index].append(result.seconds)
            stats[index] = dict(prompt=results["reuse"].prompt_tokens, computed=results["reuse"].computed_tokens)

    medians = {name: [statistics.median(values) for values in per_turn] for name, per_turn in times.items()}
    parameters = sum(parameter.numel() for parameter in model.parameters()) / 1e6
    print(
        f"chat turns: {args.seconds:g} s audio per spoken turn, {args.new_tokens} new tokens per turn, "
        f"BLSP-Emo {parameters:.0f}M parameters, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"median of {args.runs} conversations"
    )
    print(f"{'turn':>4} {'kind':>6}{'prompt tok':>12}{'computed':>10}{'reuse s':>10}{'re-encode s':>13}{'ratio':>8}")
    for index, turn in enumerate(turns):
        reuse, again = medians["reuse"][index], medians["re-encode"][index]
        kind = "speech" if "audio" in turn else "text"
        print(
            f"{index + 1:>4} {kind:>6}{stats[index]['prompt']:>12}{stats[index]['computed']:>10}"
            f"{reuse:>10.3f}{again:>13.3f}{again / reuse:>8.2f}"
        )
    print("replies identical in both modes on every turn")
    print(f"re-encode / reuse time at turn {len(turns)}: {medians['re-encode'][-1] / medians['reuse'][-1]:.2f}x")


if __name__ == "__main__":
    main()
