"""Export forms: how a model takes a form ONNX can hold, owned by the modules themselves.

A module whose PyTorch formulation does not export (or exports slowly) defines ``exportable()``, returning a module
that computes the same function with the same weights in eval mode (``MelSTFT.exportable()``, DyMN's dynamic
convolution and dynamic ReLU); one whose int8 form would lose too much sets ``int8_refusal`` to the reason, one line.
:func:`with_export_forms` builds a model's exportable copy from them, so the exporter needs to know no model family.
"""
from __future__ import annotations

import copy

from torch import nn

__all__ = ["int8_refusal", "with_export_forms"]


def with_export_forms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in eval mode, every submodule with an ``exportable()`` method replaced by what it returns.

    ``model`` itself is untouched; a replaced module's own children are not visited (its export form covers them).
    """
    model = copy.deepcopy(model).eval()
    _replace_children(model)
    return model


def _replace_children(module: nn.Module) -> None:
    for name, child in list(module.named_children()):
        if callable(getattr(child, "exportable", None)):
            setattr(module, name, child.exportable().eval())
        else:
            _replace_children(child)


def int8_refusal(model: nn.Module) -> str | None:
    """Why ``model`` must not be quantised to int8 (the first submodule's ``int8_refusal``), or None."""
    for module in model.modules():
        reason = getattr(module, "int8_refusal", None)
        if isinstance(reason, str):
            return reason
    return None
