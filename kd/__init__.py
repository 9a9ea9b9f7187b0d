"""kd: knowledge distillation for audio.

Teachers run once (``kd teach``) and write their logits into a ``logit_store``; students are then
distilled from any ensemble of stored teachers (``kd distill``) as often as needed. This package is
the orchestrating core: data readers, losses, training, metrics and experiment tracking. The model
families live in ``teachers`` and ``students``, the storage layer in ``logit_store``.
"""
from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("kd-audio")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.1.0"

__all__ = ["__version__"]
