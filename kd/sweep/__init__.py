"""``kd sweep``: a grid of ``kd distill`` runs (teacher choices x students x seeds x settings), resumable and spread
over the machines' workers, ending with the ``kd compare`` table of its runs (:mod:`kd.sweep.grid`).

It may import every stage below the demo: :mod:`kd.train` (each point is a distillation), :mod:`kd.teach`'s
worker placement (one GPU per worker, as ``kd teach`` places its chunks) and :mod:`kd.track` (the parent MLflow
run and the comparison).
"""
