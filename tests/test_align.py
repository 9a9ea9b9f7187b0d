"""Frame alignment between teacher and student frame rates."""
import pytest
import torch

from kd.align import align_frames, alignment_matrix


def test_integer_downsampling_is_average_pooling():
    x = torch.randn(2, 100, 3)
    pooled = torch.nn.functional.avg_pool1d(x.transpose(1, 2), 4).transpose(1, 2)
    assert torch.allclose(align_frames(x, 100.0, 25.0, 25), pooled, atol=1e-6)


def test_same_rate_is_identity_and_rows_sum_to_one():
    x = torch.randn(50, 4)
    assert torch.allclose(align_frames(x, 10.0, 10.0, 50), x, atol=1e-6)
    for args in [(97, 25.0, 10, 3.2), (10, 3.2, 97, 25.0), (33, 10.0, 41, 10.0)]:
        assert torch.allclose(alignment_matrix(*args).sum(dim=1), torch.ones(args[2]))


def test_upsampling_interpolates_between_frame_centres():
    x = torch.tensor([[0.0], [1.0]])  # centres at 0.25 s and 0.75 s (2 fps)
    y = align_frames(x, 2.0, 4.0, 4)  # centres at .125, .375, .625, .875 s
    assert y.flatten().tolist() == pytest.approx([0.0, 0.25, 0.75, 1.0])


def test_event_boundaries_survive_a_round_trip_of_rates():
    labels = torch.zeros(1, 250, 1)
    labels[0, 50:150] = 1.0  # 2 s .. 6 s at 25 fps
    student = align_frames(labels, 25.0, 6.25, 63)
    on = (student[0, :, 0] > 0.5).nonzero().flatten()
    assert on.min().item() / 6.25 == pytest.approx(2.0, abs=0.16) and (on.max().item() + 1) / 6.25 == pytest.approx(
        6.0, abs=0.16
    )
