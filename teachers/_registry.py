"""The teacher registry, filled by each family file on import, and building teachers by name."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from layers import Checkpoint, CheckpointError, Registry, build_model, sha256_file

from ._base import Teacher

__all__ = ["RELEASES", "TEACHERS", "create_teacher", "list_teachers", "register_teacher", "release_path", "teacher_cfg"]

TEACHERS: Registry[Teacher] = Registry("teacher")
register_teacher = TEACHERS.register
RELEASES = Path(__file__).resolve().parent / "releases"  # release files shipped with kd (the demo teachers)

# The pretraining corpus of the demo teachers (scripts/pretrain_demo_teachers.py, defaults): kd demo-data's scene
# generators with another seed than any quick start, other recording locations and other simulated devices.
DEMO_PRETRAINING = {
    "corpus": "synthetic acoustic scenes from kd demo-data's generators (the demo's 10 scene classes), seed 2024: "
              "22 800 training clips of 2 280 recording locations through 91 simulated devices, none of them one "
              "of the demo's 9 devices or one of its clips; held out: 1 200 clips of 120 other locations and 5 "
              "other devices",
    "clips": 22800,
    "script": "scripts/pretrain_demo_teachers.py",
}


# How the transformer releases were pretrained (scripts/pretrain_demo_teachers.py, BENCHMARKS.md): four stages,
# each from the best weights of the one before; a release is the best held-out epoch of its last stage, and its
# "epochs" count the epochs along that path (each stage up to its best epoch). Stage 4 is the rest of stage 3's
# ramp-down, from the stage-3 release (its learning rate and length per model in the model's cfg).
DEMO_STAGES = {
    "stage1": "labels; SpecAugment masks, PaSST patchout 3/4; lr 1e-3",
    "stage2": "--stage stage2 --soft-targets cp_resnet --lr 3e-4 (labels and the CNN release's soft targets)",
    "stage3": "--stage stage3 --soft-targets cp_resnet --kd-lambda 0.5 --lr 5e-4 --no-masks --patchout 2 1 "
              "--epochs 20 --warmup-epochs 0.5",
    "stage4": "--init <the stage-3 release> --stage stage4 --soft-targets cp_resnet --kd-lambda 0.5 --no-masks "
              "--warmup-epochs 0.2 --rampdown-start 0",
}


# What the demo releases were trained to tell apart (kd demo-data's scenes, in its class order): the class names
# and task of their heads, for users who run a release as it ships (kd predict, kd embed).
DEMO_HEAD = {
    "task": "asc",
    "classes": ["airport", "bus", "metro", "metro_station", "park", "public_square", "shopping_mall",
                "street_pedestrian", "street_traffic", "tram"],
}


def list_teachers(pattern: str | None = None) -> list[str]:
    """Registered teacher names, sorted, optionally filtered by a shell-style pattern (``"passt_s_*"``)."""
    return TEACHERS.names(pattern)


def teacher_cfg(name: str) -> dict[str, Any]:
    """The registry metadata of ``name`` (release file, origin, published score) without building the model."""
    return dict(TEACHERS.get(name).cfg)


def release_path(name: str) -> Path:
    """The release file of ``name`` that ships with kd, after checking its sha256 against the registry's.

    Raises:
        CheckpointError: ``name`` has no shipped release (the official PaSST/AST files are downloaded by the user
            and passed as ``checkpoint``), or the file is missing or not the one registered.
    """
    cfg = TEACHERS.get(name).cfg
    if "sha256" not in cfg:
        where = f"; download {cfg['file']} ({cfg['url']}) and pass it as the checkpoint" if "url" in cfg else ""
        raise CheckpointError(f"no release of {name} ships with kd{where}")
    path = RELEASES / cfg["file"]
    if not path.is_file():
        raise CheckpointError(f"the release file of {name} is missing: {path} (reinstall kd)")
    digest = sha256_file(path)
    if digest != cfg["sha256"]:
        raise CheckpointError(f"{path} has sha256 {digest}, the registry expects {cfg['sha256']}: it is damaged or "
                              "was replaced")
    return path


def create_teacher(
    name: str, checkpoint: Checkpoint | None = None, *, pretrained: bool = False, new_heads: bool | None = None,
    **kwargs: Any
) -> Teacher:
    """Build the teacher ``name`` and optionally load ``checkpoint`` into it with strict key matching.

    Args:
        checkpoint: a path (official release file or a checkpoint saved from this model) or a state dict.
        pretrained: load the release that ships with kd (``release_path(name)``) as the checkpoint.
        new_heads: what to do with classifier heads the checkpoint cannot fill. ``None`` (default): heads whose
            class count differs from the checkpoint's are freshly initialised when ``num_classes`` is passed
            (fine-tuning an official checkpoint on a new label set); everything else must match. ``True``: also
            initialise heads the checkpoint lacks (e.g. the frame head of a frame-wise teacher started from a
            clip-level release). ``False``: every key must match.
        **kwargs: constructor overrides of the entrypoint (``num_classes``, ``clip_seconds``, patchout, ...).
    """
    if pretrained:
        if checkpoint is not None:
            raise CheckpointError(f"{name}: pass a checkpoint or pretrained=True, not both")
        checkpoint = release_path(name)
    if new_heads is None:
        fresh = "resized" if "num_classes" in kwargs else "never"
    else:
        fresh = "resized_or_missing" if new_heads else "never"
    model = build_model(TEACHERS.get(name), checkpoint, fresh_classifiers=fresh, **kwargs)
    model.teacher_name = name
    return model
