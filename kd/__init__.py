"""kd: knowledge distillation for audio.

Teachers run once (``kd teach``) and write their logits into a ``logit_store``; students are then
distilled from any ensemble of stored teachers (``kd distill``) as often as needed. This package is
the orchestrating core, in subpackages by stage of that pipeline, each importing only the ones below it
(pyproject's ``kd-stages`` contract): :mod:`kd.demo` (quick start, demo data), :mod:`kd.deploy` (export,
ONNX Runtime, ``kd eval``/``kd predict``), :mod:`kd.teach` | :mod:`kd.train` (independent of each other),
:mod:`kd.track` (MLflow, ``kd compare``), :mod:`kd.evaluate` (the model-over-loader loop, figures),
:mod:`kd.core` (views, checkpoints, devices, memory, complexity, failures), :mod:`kd.data` (dataset readers),
:mod:`kd.tasks` (the tasks, their losses and metrics) and :mod:`kd.options` (the option vocabularies). The model
families live in ``teachers`` and ``students``, the storage layer in ``logit_store``.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kd-audio")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
