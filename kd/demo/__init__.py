"""The demo: synthetic datasets in real layouts (:mod:`kd.demo.data`, ``kd demo-data``, built on the scene and
device models of :mod:`kd.demo.synth`) and the quick start that teaches, distils and compares on them
(:mod:`kd.demo.quickstart`, ``kd quickstart``).

The top of kd: it may import every stage below. This ``__init__`` imports nothing, so that ``kd demo-data``
(torch-free, like :mod:`kd.data`) does not load the quick start's training stack.
"""
