"""Embeddings from an exported file: the tensor its classifier reads, exposed as a second graph output.

``kd export`` keeps the parameters' names (``classifier.5.weight``, ``feed_forward.0.weight``, under the module
the export wraps the student in, with suffixes after quantisation; a linear layer's weight may be folded into an
unnamed transposed constant, its bias keeps the name), so the classifier's first node is the first compute node
that reads a parameter of the student's first classifier layer (or the product whose result its bias is added
to); its first input is the embedding, taken before quantisation where the file is int8.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import onnx

from kd.deploy.onnx_runtime import OnnxStudent
from kd_errors import KdError
from students import create_student

__all__ = ["classifier_input", "onnx_embedder"]

QUANTISATION_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}


def classifier_input(graph: onnx.GraphProto, classifier_names: Sequence[str]) -> str:
    """The name of the float tensor the classifier's first node reads.

    Raises:
        KdError: no node of the graph reads a parameter of the classifier.
    """
    producers = {out: node for node in graph.node for out in node.output}
    for node in graph.node:
        if node.op_type in QUANTISATION_OPS:
            continue
        if any(_is_classifier_parameter(_parameter_name(name, producers), classifier_names)
               for name in node.input[1:]):
            if node.op_type == "Add" and node.input[0] in producers:  # the bias kept its name, the folded weight not
                node = producers[_parameter_name(node.input[0], producers)]
            tensor = node.input[0]
            while tensor in producers and producers[tensor].op_type in QUANTISATION_OPS:
                tensor = producers[tensor].input[0]  # an int8 file: the float tensor before quantisation
            return tensor
    raise KdError(f"found no node reading the classifier ({', '.join(classifier_names)}) in the graph: this file "
                  "gives no embedding")


def _is_classifier_parameter(tensor: str, classifier_names: Sequence[str]) -> bool:
    """Whether ``tensor`` is a parameter of a classifier layer, whatever module the export wrapped the model in
    (``student.feed_forward.0.weight`` is ``feed_forward.0``'s)."""
    return any(f".{name}." in f".{tensor}" for name in classifier_names)


def _parameter_name(tensor: str, producers: dict) -> str:
    """The parameter behind ``tensor``: itself, or what a chain of (de)quantisation nodes starts from."""
    while tensor in producers and producers[tensor].op_type in QUANTISATION_OPS:
        tensor = producers[tensor].input[0]
    return tensor


def onnx_embedder(student: OnnxStudent) -> Callable[[np.ndarray], tuple[np.ndarray, np.ndarray | None]]:
    """``waveforms -> (scene, frames)`` of an exported file, run in a session that also outputs its embedding."""
    from kd.embed import pooled

    proto = onnx.load(student.name)
    names = create_student(student.info.student, len(student.classes)).classifier_names
    tensor = classifier_input(proto.graph, names)
    proto.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    session = OnnxStudent(proto.SerializeToString(), device="cpu", name=student.name)

    def embed(waveforms: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        (value,) = session.session.run([tensor], {session.input_name: session.model_input(waveforms)})
        return pooled([value])

    return embed
