"""Every registered teacher and student knows the shortest input it takes: exactly that many samples go through,
one sample fewer is refused, and longer inputs go through."""
import pytest
import torch

from layers.probe import REFUSALS, shortest_input
from students import create_student, list_students
from teachers import TEACHERS, create_teacher, list_teachers


def _teacher(name):
    transformer = TEACHERS.get(name).fn.__module__ in ("teachers.passt", "teachers.ast") and "tiny" not in name
    return create_teacher(name, **({"depth": 1} if transformer else {})).eval()  # the patching sets the length


def _accepts(model, samples):
    try:
        with torch.inference_mode():
            model(torch.zeros(1, samples))
    except REFUSALS:
        return False
    return True


def _check_shortest(model):
    shortest = model.min_input_samples()
    assert 1 < shortest <= model.sample_rate  # every model kd ships takes a second of audio
    assert _accepts(model, shortest) and not _accepts(model, shortest - 1)
    assert all(_accepts(model, shortest + extra) for extra in (1, 7, 321, 4000))  # and every longer input
    assert model.min_input_samples() == shortest and not model.training
    return shortest


@pytest.mark.parametrize("name", list_teachers())
def test_every_teacher_takes_exactly_its_shortest_input(name):
    _check_shortest(_teacher(name))


@pytest.mark.parametrize("name", list_students())
def test_every_student_takes_exactly_its_shortest_input(name):
    _check_shortest(create_student(name, num_classes=5).eval())


def test_known_shortest_inputs():
    """What sets them: PaSST one 16-frame patch at hop 320, AST one 400-sample fbank frame, CP-ResNet 17 frames of
    hop 750 for its pooling stack, the MobileNets a centred STFT (more than 512 samples after pre-emphasis)."""
    assert _teacher("passt_tiny").min_input_samples() == 15 * 320 + 1
    assert _teacher("ast_audioset_10_10_0_4593").min_input_samples() == 400
    assert create_student("cp_resnet", 10).min_input_samples() == 16 * 750 + 1
    assert create_student("mn04", 10).min_input_samples() == 514


def test_the_probe_keeps_the_mode_and_a_broken_model_raises_its_own_error():
    model = create_student("cp_mobile_tiny", 10).train()
    model.min_input_samples()
    assert model.training

    class Broken(torch.nn.Module):
        def forward(self, wave):
            raise RuntimeError("broken on every input")

    with pytest.raises(RuntimeError, match="broken on every input"):
        shortest_input(Broken(), limit=1000)
