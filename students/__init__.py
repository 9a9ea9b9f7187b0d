"""Students: the small audio models kd distils into, and what users ship.

Every student is built by name (``create_student(name, num_classes, checkpoint=None, **overrides)``; names from
``list_students``) and follows one contract:

* ``sample_rate`` (Hz) and ``num_classes``;
* ``frames_per_second``: the rate of the frame logits of frame-wise (SED) students, None for clip-level ones;
* ``frontend``: an ``nn.Module`` turning a waveform ``[B, N]`` into the spectrogram ``[B, 1, F, T]`` the model
  takes; its training-only augmentation (mel-range jitter, SpecAugment masks) is active in training mode only;
* ``forward_spectrogram(spec)``: logits ``[B, C]`` (clip students) or frame logits ``[B, T, C]`` (SED students),
  so training can augment spectrograms (mixup, Freq-MixStyle) between frontend and model;
* ``forward(waveform)``: frontend, then ``forward_spectrogram``;
* ``classifier_names``: the layers sized by ``num_classes``. ``create_student(..., checkpoint=PATH)`` loads a
  local checkpoint strictly through the family's ``checkpoint_filter_fn``; when the checkpoint has another class
  count, only these layers keep a fresh initialisation.

Each registry entry carries a ``cfg`` (``student_cfg(name)``): paper, sample rate, input length and, where the
paper publishes them, its parameter and MAC figures (``published``), which ``kd.complexity`` reproduces; and the
family's ``checkpoint_filter_fn``, through which ``layers.build_model`` (the builder of teachers and students)
loads checkpoints.
Buffers (windows, mel banks) move with the module, so ``student.to("cuda")`` runs on the GPU.

Families: ``mobilenet`` (EfficientAT MobileNetV3 ``mn01``..``mn40``), ``dymn`` (dynamic MobileNets ``dymn04``,
``dymn10``, ``dymn20``), ``cp_mobile`` and ``cp_resnet`` (DCASE'23 Task 1 low-complexity scene classifiers),
``sed`` (frame-wise MobileNet/DyMN with a GRU, transformer or TCN sequence model, after EfficientSED).
"""
from . import cp_mobile, cp_resnet, dymn, mobilenet, sed
from ._base import Student
from ._registry import STUDENTS, create_student, list_students, register_student, student_cfg

__all__ = [
    "STUDENTS",
    "Student",
    "cp_mobile",
    "cp_resnet",
    "create_student",
    "dymn",
    "list_students",
    "mobilenet",
    "register_student",
    "sed",
    "student_cfg",
]
