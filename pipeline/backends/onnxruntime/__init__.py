"""onnxruntime: the simplified ONNX graph itself, run by onnxruntime's CPU execution provider."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.backends.base import Backend, Precision
from pipeline.verify.gates import FLOAT32

if TYPE_CHECKING:
    from pipeline.backends.base import Lowering


def lower(lowering: "Lowering", precision: str) -> str:
    # the simplified graph is the artifact; onnxruntime needs no conversion
    return lowering.onnx()


BACKEND = Backend(
    name="onnxruntime",
    description="The exported ONNX graph (opset 17), for onnxruntime on a server, desktop or phone.",
    precisions=(Precision("fp32", "float32 weights and activations", FLOAT32),),
    tools=("onnx", "onnxruntime"),
    lowering="pipeline.backends.onnxruntime:lower",
    session="pipeline.backends.onnxruntime.session:OnnxRuntimeSession",
    runtime_label="onnxruntime CPU execution provider",
)
