"""Experiment tracking: MLflow runs, their parameters, metrics, datasets and figures (:mod:`kd.track.tracking`),
and ``kd compare``, which reads finished runs back as a teacher-choice table (:mod:`kd.track.compare`).

It may import :mod:`kd.evaluate` (figures) and the levels below; teaching and training log through it.
"""
