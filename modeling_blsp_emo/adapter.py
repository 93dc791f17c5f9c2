"""The modality adapter: Whisper states (50 Hz, d) → LLM input embeddings (6.25 Hz, h)."""

import torch
from torch import nn

from .speech_lengths import conv_output_length


def length_mask(lengths: torch.Tensor, max_length: int) -> torch.Tensor:
    """Boolean mask (batch, max_length) that is True on the first `lengths[i]` steps of row i."""
    return torch.arange(max_length, device=lengths.device)[None, :] < lengths[:, None]


class SpeechAdapter(nn.Module):
    """Strided conv-GLU subsampler, then a residual bottleneck FFN and LayerNorm.

    Padded steps are zeroed before every convolution, so a clip's output does not depend on how
    much padding its batch adds after it.
    """

    def __init__(self, input_dim: int, output_dim: int, kernel_sizes: tuple[int, ...], inner_dim: int):
        super().__init__()
        channels = [input_dim] * len(kernel_sizes) + [output_dim]
        # Each conv doubles its output channels for the GLU gate that halves them again.
        self.conv_layers = nn.ModuleList(
            nn.Conv1d(channels[i], 2 * channels[i + 1], kernel_size, stride=2, padding=kernel_size // 2)
            for i, kernel_size in enumerate(kernel_sizes)
        )
        self.fc1 = nn.Linear(output_dim, inner_dim, bias=False)
        self.fc2 = nn.Linear(inner_dim, output_dim, bias=False)
        self.layer_norm = nn.LayerNorm(output_dim, eps=1e-5)

    def forward(self, hidden_states: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Map `(batch, frames, input_dim)` encoder states with real `lengths` to
        `(batch, frames', output_dim)` embeddings and their real lengths."""
        states = hidden_states.transpose(1, 2)
        for conv in self.conv_layers:
            states = states * length_mask(lengths, states.shape[-1])[:, None, :].to(states.dtype)
            states = nn.functional.glu(conv(states), dim=1)
            lengths = conv_output_length(lengths, conv.kernel_size[0], conv.stride[0])
        states = states.transpose(1, 2)
        states = states + self.fc2(nn.functional.gelu(self.fc1(states)))
        return self.layer_norm(states), lengths
