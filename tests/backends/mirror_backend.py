"""A backend defined outside pipeline/: the registry test plugs it in with one registry entry."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pipeline.backends.base import Backend, Precision
from pipeline.verify.gates import FLOAT32


class MirrorOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    note: str = Field("", description="Free text, to show that options reach the manifest.")


def lower(lowering, precision: str) -> str:
    return lowering.onnx()


BACKEND = Backend(
    name="mirror",
    description="onnxruntime under another name, to test the registry.",
    precisions=(Precision("fp32", "float32", FLOAT32),),
    tools=("onnxruntime",),
    lowering="tests.backends.mirror_backend:lower",
    session="pipeline.backends.onnxruntime.session:OnnxRuntimeSession",
    options=MirrorOptions,
    device_latency=False,
    runtime_label="onnxruntime, under another name",
)
