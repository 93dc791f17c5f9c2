"""Whisper encoder forward passes for clips of any length up to 30 s.

transformers' `WhisperEncoder.forward` accepts exactly 3000 mel frames and ignores attention masks,
so the variable-length path runs the encoder's own modules: the positional embedding is sliced to
the input length and padded frames are masked out of attention.
"""

import torch
from torch import nn
from transformers.masking_utils import create_bidirectional_mask
from transformers.models.whisper.modeling_whisper import WhisperEncoder

from .adapter import length_mask
from .speech_lengths import WINDOW_FRAMES, conv_output_length


def check_input_features(encoder: WhisperEncoder, input_features: torch.Tensor, audio_padding: str) -> None:
    """Raise a `ValueError` naming the problem when features do not fit this encoder."""
    if input_features.ndim != 3:
        raise ValueError(f"input_features must be (clips, mel bins, frames), got shape {tuple(input_features.shape)}")
    num_mel_bins = encoder.config.num_mel_bins
    if input_features.shape[1] != num_mel_bins:
        raise ValueError(
            f"input_features have {input_features.shape[1]} mel bins but this Whisper encoder expects {num_mel_bins} "
            "(use the feature extractor saved with the model)"
        )
    frames = input_features.shape[-1]
    if audio_padding == "max_length" and frames != WINDOW_FRAMES:
        raise ValueError(f"audio_padding='max_length' expects {WINDOW_FRAMES} mel frames (30 s), got {frames}")
    if frames > WINDOW_FRAMES:
        raise ValueError(f"input_features have {frames} mel frames; at most {WINDOW_FRAMES} (30 s) per window")


def encode_variable_length(
    encoder: WhisperEncoder, input_features: torch.Tensor, frame_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode `(clips, mel, frames)` features with `frame_lengths` real frames each.

    Returns hidden states `(clips, frames', d_model)` and their real lengths. Padded frames are
    zeroed before each convolution (matching a convolution's own zero padding at a clip's end),
    so results do not depend on batch composition.
    """
    features = input_features.to(encoder.conv1.weight.dtype)
    frame_mask = length_mask(frame_lengths, features.shape[-1])[:, None, :].to(features.dtype)
    states = nn.functional.gelu(encoder.conv1(features * frame_mask)) * frame_mask
    states = nn.functional.gelu(encoder.conv2(states)).transpose(1, 2)
    lengths = conv_output_length(frame_lengths, 3)

    positions = encoder.embed_positions.weight[: states.shape[1]]
    hidden_states = states + positions.to(states.dtype)
    hidden_states = nn.functional.dropout(hidden_states, p=encoder.dropout, training=encoder.training)
    attention_mask = create_bidirectional_mask(
        config=encoder.config, inputs_embeds=hidden_states, attention_mask=length_mask(lengths, states.shape[1])
    )
    for layer in encoder.layers:
        if encoder.training and encoder.layerdrop > 0 and torch.rand([]) < encoder.layerdrop:
            continue
        hidden_states = layer(hidden_states, attention_mask)
    return encoder.layer_norm(hidden_states), lengths


def encode_padded_to_30s(
    encoder: WhisperEncoder, input_features: torch.Tensor, frame_lengths: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The original release's path: encode all 3000 frames (30 s), then trim to the longest clip."""
    hidden_states = encoder(input_features.to(encoder.conv1.weight.dtype)).last_hidden_state
    lengths = conv_output_length(frame_lengths, 3)
    return hidden_states[:, : int(lengths.max())], lengths
