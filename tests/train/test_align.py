"""Frame alignment between teacher and student frame rates."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kd.train.align import align_frames, alignment_matrix


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


@settings(max_examples=60, deadline=None)
@given(src_frames=st.integers(1, 300), src_fps=st.floats(1.0, 100.0), dst_fps=st.floats(1.0, 100.0),
       value=st.floats(-50.0, 50.0))
def test_alignment_keeps_constants_and_bounds(src_frames, src_fps, dst_fps, value):
    """Any rates and lengths: a constant stays that constant, and every output lies within the input's range."""
    dst_frames = max(1, round(src_frames * dst_fps / src_fps))
    matrix = alignment_matrix(src_frames, src_fps, dst_frames, dst_fps)
    assert (matrix >= 0).all() and torch.allclose(matrix.sum(dim=1), torch.ones(dst_frames), atol=1e-5)
    constant = torch.full((src_frames, 2), value)
    assert torch.allclose(align_frames(constant, src_fps, dst_fps, dst_frames), constant[:1].expand(dst_frames, 2),
                          atol=1e-4 * max(1.0, abs(value)))
    x = torch.randn(src_frames, 3)
    y = align_frames(x, src_fps, dst_fps, dst_frames)
    assert (y <= x.max(dim=0).values + 1e-5).all() and (y >= x.min(dim=0).values - 1e-5).all()


@settings(max_examples=40, deadline=None)
@given(frames=st.integers(2, 200), ratio=st.integers(1, 8))
def test_a_step_moves_by_at_most_one_frame_of_the_coarser_rate(frames, ratio):
    """An event boundary keeps its time within one coarse frame when labels go to a lower rate and back."""
    fine_fps, coarse_fps = 10.0 * ratio, 10.0
    boundary = frames // 2
    labels = torch.zeros(frames, 1)
    labels[boundary:] = 1.0
    coarse_frames = -(-frames // ratio)
    there = align_frames(labels, fine_fps, coarse_fps, coarse_frames)
    back = align_frames(there, coarse_fps, fine_fps, frames)
    crossing = int((back[:, 0] >= 0.5).float().argmax())
    assert abs(crossing - boundary) <= ratio
