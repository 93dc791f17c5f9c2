"""The variable-length Whisper path: clips of similar length are encoded together, and the result is
the same as encoding the whole padded batch at once."""

import torch

from modeling_blsp_emo.speech_encoder import encode_in_length_groups, encode_variable_length, length_groups

from tiny_models import clip_features, random_clip, tiny_model


def test_length_groups_keep_padding_within_the_tolerance():
    lengths = torch.tensor([1000, 200, 886, 543, 771, 314, 657, 429])
    groups = [group.tolist() for group in length_groups(lengths)]
    assert groups == [[0, 2, 4, 6], [3, 7], [5, 1]]
    assert length_groups(torch.tensor([300, 290, 280]))[0].tolist() == [0, 1, 2]  # one group: no copy
    assert [g.tolist() for g in length_groups(torch.tensor([5]))] == [[0]]


def batch_of_clips(num_samples: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    clips = [clip_features(random_clip(n, seed)) for seed, n in enumerate(num_samples)]
    width = max(features.shape[-1] for features, _ in clips)
    features = torch.stack([torch.nn.functional.pad(f, (0, width - f.shape[-1])) for f, _ in clips])
    return features, torch.tensor([int(mask.sum()) for _, mask in clips])


def test_grouped_encoding_equals_the_whole_batch_at_real_steps():
    encoder = tiny_model().model.audio_encoder.eval()
    features, frame_lengths = batch_of_clips([8000, 48000, 16000, 44000])
    assert len(length_groups(frame_lengths)) > 1
    with torch.no_grad():
        grouped, lengths = encode_in_length_groups(encoder, features, frame_lengths)
        whole, whole_lengths = encode_variable_length(encoder, features, frame_lengths)
    assert grouped.shape == whole.shape and torch.equal(lengths, whole_lengths)
    for row, length in enumerate(lengths.tolist()):
        torch.testing.assert_close(grouped[row, :length], whole[row, :length], atol=1e-5, rtol=0)


def test_grouped_encoding_passes_gradients_to_every_clip():
    encoder = tiny_model().model.audio_encoder.train()
    features, frame_lengths = batch_of_clips([8000, 48000])
    features.requires_grad_(True)
    hidden, lengths = encode_in_length_groups(encoder, features, frame_lengths)
    hidden.sum().backward()
    for row, frames in enumerate(frame_lengths.tolist()):
        assert features.grad[row, :, :frames].abs().sum() > 0
    assert encoder.layers[0].fc1.weight.grad.abs().sum() > 0
