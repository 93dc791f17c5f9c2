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

# `(hidden states, lengths)`, or `(hidden states, lengths, middle layer's output)` when a middle layer is asked for.
EncoderOutput = tuple[torch.Tensor, torch.Tensor] | tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def check_middle_layer(encoder: WhisperEncoder, middle_layer: int) -> None:
    if not 0 <= middle_layer < len(encoder.layers):
        raise ValueError(f"middle_layer={middle_layer}: this encoder has layers 0..{len(encoder.layers) - 1}")


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
    encoder: WhisperEncoder, input_features: torch.Tensor, frame_lengths: torch.Tensor, middle_layer: int | None = None
) -> EncoderOutput:
    """Encode `(clips, mel, frames)` features with `frame_lengths` real frames each.

    Returns hidden states `(clips, frames', d_model)` and their real lengths. Padded frames are
    zeroed before each convolution (matching a convolution's own zero padding at a clip's end),
    so results do not depend on batch composition. With `middle_layer`, the output of
    `encoder.layers[middle_layer]` `(clips, frames', d_model)` comes third.
    """
    if middle_layer is not None:
        check_middle_layer(encoder, middle_layer)
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
    middle_states = None
    for index, layer in enumerate(encoder.layers):
        if not (encoder.training and encoder.layerdrop > 0 and torch.rand([]) < encoder.layerdrop):
            hidden_states = layer(hidden_states, attention_mask)
        if index == middle_layer:
            middle_states = hidden_states
    if middle_layer is None:
        return encoder.layer_norm(hidden_states), lengths
    return encoder.layer_norm(hidden_states), lengths, middle_states


# A group of clips encoded together pads every clip to its longest; a new group starts where that
# padding would exceed this share of the group's real frames (fewer, larger groups suit GPUs).
GROUP_PADDING_TOLERANCE = 0.25


def length_groups(frame_lengths: torch.Tensor) -> list[torch.Tensor]:
    """Clip indices grouped by similar length, longest first: sorted by length, a group takes the next
    clip while padding every member to the group's longest stays within `GROUP_PADDING_TOLERANCE` of
    the group's real frames."""
    order = torch.argsort(frame_lengths.cpu(), descending=True, stable=True).tolist()
    lengths = frame_lengths.tolist()
    groups, current, real = [], [], 0
    for index in order:
        longest = lengths[current[0]] if current else lengths[index]
        if current and longest * (len(current) + 1) > (1 + GROUP_PADDING_TOLERANCE) * (real + lengths[index]):
            groups.append(current)
            current, real = [], 0
        current.append(index)
        real += lengths[index]
    groups.append(current)
    return [torch.tensor(group, device=frame_lengths.device) for group in groups]


def encode_in_length_groups(
    encoder: WhisperEncoder, input_features: torch.Tensor, frame_lengths: torch.Tensor, middle_layer: int | None = None
) -> EncoderOutput:
    """`encode_variable_length`, with clips of similar length encoded together (`length_groups`), so that
    a batch of short and long clips does not run the encoder over the short clips' padding (a batch of
    2-10 s clips: ~35 % less encoder time on a CPU). As there, padded steps carry no meaning, and
    `middle_layer` adds that layer's output."""
    groups = length_groups(frame_lengths)
    if len(groups) == 1:
        return encode_variable_length(encoder, input_features, frame_lengths, middle_layer)
    width = conv_output_length(input_features.shape[-1], 3)
    outputs = None  # hidden states, then the middle layer's output when asked for
    for group in groups:
        group_lengths = frame_lengths[group]
        encoded = encode_variable_length(encoder, input_features[group, :, : int(group_lengths.max())], group_lengths, middle_layer)
        group_states = (encoded[0],) if middle_layer is None else (encoded[0], encoded[2])
        if outputs is None:
            outputs = [states.new_zeros(len(frame_lengths), width, states.shape[-1]) for states in group_states]
        for whole, states in zip(outputs, group_states):
            whole[group, : states.shape[1]] = states
    lengths = conv_output_length(frame_lengths, 3)
    return (outputs[0], lengths) if middle_layer is None else (outputs[0], lengths, outputs[1])


def encode_padded_to_30s(
    encoder: WhisperEncoder, input_features: torch.Tensor, frame_lengths: torch.Tensor, middle_layer: int | None = None
) -> EncoderOutput:
    """The original release's path: encode all 3000 frames (30 s), then trim to the longest clip.
    With `middle_layer`, the output of `encoder.layers[middle_layer]`, trimmed alike, comes third."""
    features = input_features.to(encoder.conv1.weight.dtype)
    lengths = conv_output_length(frame_lengths, 3)
    if middle_layer is None:
        return encoder(features).last_hidden_state[:, : int(lengths.max())], lengths
    check_middle_layer(encoder, middle_layer)
    captured = []
    hook = encoder.layers[middle_layer].register_forward_hook(
        lambda module, args, output: captured.append(output[0] if isinstance(output, tuple) else output)
    )
    try:
        hidden_states = encoder(features).last_hidden_state
    finally:
        hook.remove()
    if not captured:  # LayerDrop skipped the layer: its output is its input, which no hook sees
        raise RuntimeError(f"encoder layer {middle_layer} was skipped (LayerDrop), so its output is unknown")
    width = int(lengths.max())
    return hidden_states[:, :width], lengths, captured[-1][:, :width]
