"""Why clips have no logits: the per-clip failures ``kd teach`` records, sorted into kinds with what fixes each.

``kd teach`` records a clip (its id and a one-line reason) only where the data is at fault: the file is missing,
empty or corrupt, holds no sound or non-finite samples, is too short to be a recording of the dataset, or a
teacher's logits on it stay non-finite even in fp32. ``kd teach`` ends with these grouped by kind, and
``kd distill`` says the same when training clips have no logits. Stores taught before teacher errors stopped
the job may also hold ``teacher NAME failed`` records (a short clip that a CNN teacher's pooling could not
take, recorded as if the clip were bad).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["FAILURE_KINDS", "FailureGroup", "describe_failures", "failure_kind", "group_failures"]

FIXES = {
    "undecodable": "missing, empty or corrupt files: fix or remove them and teach a new store",
    "too short": "under half the dataset's short end, too short to be its recordings: remove them",
    "silent": "all zeros, nothing to learn from: remove them",
    "non-finite audio": "NaN or infinite samples: fix or remove the files",
    "non-finite logits": "the teacher's logits stay NaN or infinite even in fp32: check its checkpoint",
    "teacher error": "recorded by an older kd that took a teacher's error for the clip's; kd now pads short clips "
                     "to what every teacher takes: teach a new store",
}
FAILURE_KINDS = tuple(FIXES)


def failure_kind(reason: str) -> str:
    """The kind of a recorded failure reason (one of :data:`FAILURE_KINDS`)."""
    if reason.startswith("too short"):
        return "too short"
    if reason.startswith("silent"):
        return "silent"
    if reason.startswith("non-finite samples"):
        return "non-finite audio"
    if reason.startswith("teacher ") and reason.endswith("non-finite logits"):
        return "non-finite logits"
    if reason.startswith("teacher "):
        return "teacher error"
    return "undecodable"


@dataclass(frozen=True)
class FailureGroup:
    """The failed clips of one kind: how many, one of them with its reason, and what fixes them."""

    kind: str
    count: int
    example_id: str
    example_reason: str

    @property
    def fix(self) -> str:
        return FIXES[self.kind]

    def describe(self) -> str:
        return f"{self.count} {self.kind} (e.g. {self.example_id}: {self.example_reason}; {self.fix})"


def group_failures(failures: Mapping[str, str]) -> list[FailureGroup]:
    """``{clip id: reason}`` grouped by kind, the largest group first."""
    kinds = {clip_id: failure_kind(reason) for clip_id, reason in failures.items()}
    counts = Counter(kinds.values())
    examples = {}
    for clip_id, kind in kinds.items():
        examples.setdefault(kind, clip_id)
    return [FailureGroup(kind, n, examples[kind], failures[examples[kind]])
            for kind, n in sorted(counts.items(), key=lambda item: (-item[1], FAILURE_KINDS.index(item[0])))]


def describe_failures(failures: Mapping[str, str]) -> str:
    """One line: each kind of failure with its count, an example and its fix."""
    return "; ".join(group.describe() for group in group_failures(failures))
