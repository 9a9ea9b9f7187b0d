"""Teachers: pretrained audio taggers that produce the soft targets kd distils from.

Every teacher is built by name (``create_teacher``; names from ``list_teachers``) and follows one contract:

* ``sample_rate`` (Hz), ``clip_seconds`` (context of one pass), ``num_classes``;
* ``frames_per_second``: the rate of frame logits, or None for clip-only teachers;
* ``frontend``: an ``nn.Module`` turning a waveform ``[B, N]`` into the spectrogram the model takes
  (jitter and SpecAugment masks only in training mode);
* ``forward_spectrogram(spec) -> TeacherOutput``: the model on spectrograms, so training can augment them
  (mixup, masks) between frontend and model;
* ``forward(waveform) -> TeacherOutput``: frontend + model; inputs longer than ``clip_seconds`` are windowed and
  aggregated the way the authors do (see ``Teacher``), never silently truncated;
* ``frontend_config() -> dict``: frontend and windowing settings to record next to stored logits;
* ``classifier_names``: the modules sized by ``num_classes`` (the heads).

``TeacherOutput(clip, frame)`` holds raw logits: ``clip`` ``[B, C]``, ``frame`` ``[B, T, C]`` or None.
Buffers (windows, mel banks) move with the module, so ``teacher.to("cuda")`` runs on the GPU.

Checkpoints (official release files or ones saved from these models) load strictly through each family's
``checkpoint_filter_fn``, named in its registry entry (``layers.build_model`` builds and loads every model);
``create_teacher(name, checkpoint=..., num_classes=10)`` re-initialises only the classifier heads for
fine-tuning on a new label set. Release files that ship with kd (the pretrained demo teachers ``passt_tiny``
and ``ast_tiny``, made by ``scripts/pretrain_demo_teachers.py``) are registered with their sha256 and load the
same way: ``create_teacher(name, pretrained=True)`` or ``checkpoint=release_path(name)``. Families: ``passt``
(PaSST releases, frame-wise PaSST, ``passt_tiny``), ``ast`` (AST releases, ``ast_tiny``), ``cnn`` (student
architectures trained to teach: ``cp_resnet``, and ``kd distill`` checkpoints through ``StudentAsTeacher``).
"""
from . import ast, cnn, passt
from ._base import Teacher, TeacherInputError, TeacherOutput
from ._registry import RELEASES, TEACHERS, create_teacher, list_teachers, register_teacher, release_path, teacher_cfg
from .cnn import StudentAsTeacher

__all__ = [
    "RELEASES",
    "TEACHERS",
    "StudentAsTeacher",
    "Teacher",
    "TeacherInputError",
    "TeacherOutput",
    "ast",
    "cnn",
    "create_teacher",
    "list_teachers",
    "passt",
    "register_teacher",
    "release_path",
    "teacher_cfg",
]
