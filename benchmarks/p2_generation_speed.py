"""P2: greedy generation speed with a speech prompt vs the bare LLM on a text prompt of equal length.

Random weights at realistic sizes (see `p1_encoder_padding.py`): a Whisper-tiny-shaped encoder and a
SmolLM2-135M-shaped Llama LLM. The bare LLM is `AutoModelForCausalLM` built from the same text
config and given the same weights. Both generate exactly `--new-tokens` tokens (min = max).

    python benchmarks/p2_generation_speed.py --seconds 3 --new-tokens 32 --runs 5

On a machine shared with other jobs, pass `--threads 1`: two OpenMP threads competing with other
processes for two cores give erratic timings (small workloads suffer most).
"""

import argparse

import torch
from transformers import AutoModelForCausalLM

from modeling_blsp_emo.speech_lengths import SAMPLING_RATE, num_speech_embeddings

from p1_encoder_padding import AUDIO_TOKEN_ID, build_model, clip_features, median_seconds


def bare_llm(model) -> torch.nn.Module:
    """The stock causal LM with the LLM weights of a BLSP-Emo `model`."""
    llm = AutoModelForCausalLM.from_config(model.config.text_config).eval()
    llm.model.load_state_dict(model.model.language_model.state_dict())
    llm.lm_head.load_state_dict(model.lm_head.state_dict())
    return llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="clip length in seconds")
    parser.add_argument("--text-tokens", type=int, default=16, help="text tokens around the speech")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens to generate")
    parser.add_argument("--llm-layers", type=int, default=30, help="LLM blocks (SmolLM2-135M has 30)")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per model")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs per model")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    model = build_model(llm_layers=args.llm_layers)
    llm = bare_llm(model)
    features, frame_mask = clip_features(args.seconds, "longest")
    speech_tokens = num_speech_embeddings(int(args.seconds * SAMPLING_RATE))
    generator = torch.Generator().manual_seed(0)
    text = torch.randint(100, AUDIO_TOKEN_ID, (1, args.text_tokens + speech_tokens), generator=generator)
    before = args.text_tokens // 2
    speech_prompt = text.clone()
    speech_prompt[:, before : before + speech_tokens] = AUDIO_TOKEN_ID
    settings = dict(
        max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
        pad_token_id=model.config.text_config.eos_token_id,
    )  # fmt: skip

    def speech_run():
        return model.generate(
            input_ids=speech_prompt, attention_mask=torch.ones_like(speech_prompt),
            input_features=features, feature_attention_mask=frame_mask, **settings,
        )  # fmt: skip

    def text_run():
        return llm.generate(input_ids=text, attention_mask=torch.ones_like(text), **settings)

    with torch.inference_mode():
        assert speech_run().shape[1] == text_run().shape[1] == text.shape[1] + args.new_tokens
        seconds = median_seconds({"speech": speech_run, "text": text_run}, args.runs, args.warmup)
    speech_seconds, text_seconds = seconds["speech"], seconds["text"]

    parameters = sum(parameter.numel() for parameter in llm.parameters()) / 1e6
    print(
        f"greedy generation, {args.new_tokens} new tokens, LLM {parameters:.0f}M parameters "
        f"({args.llm_layers} layers), torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(f"{'model':<36}{'prompt tokens':>14}{'median s':>10}{'tokens/s':>10}")
    rows = [
        (f"BLSP-Emo ({args.seconds:g} s speech + text)", speech_prompt.shape[1], speech_seconds),
        ("bare LLM (text only)", text.shape[1], text_seconds),
    ]
    for name, prompt_tokens, seconds in rows:
        print(f"{name:<36}{prompt_tokens:>14}{seconds:>10.3f}{args.new_tokens / seconds:>10.1f}")
    print(f"speech / bare tokens-per-second ratio: {text_seconds / speech_seconds:.2f}")


if __name__ == "__main__":
    main()
