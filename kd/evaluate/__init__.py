"""Evaluation: the one loop that runs a model over a loader of clips and scores it (:mod:`kd.evaluate.loop`), and
the figures a run shows of its scores (:mod:`kd.evaluate.figures`). The metrics themselves belong to the task
(:mod:`kd.tasks.metrics`).

It may import :mod:`kd.core`, :mod:`kd.data`, :mod:`kd.tasks` and :mod:`kd.options` only.
"""
