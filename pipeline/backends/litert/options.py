"""The manifest's `litert:` section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LiteRtOptions(BaseModel):
    """The keep_float lists pin a recipe by hand, per precision (int8, int16x8): with any of them set for a precision, its
    recipe is not searched. int8 keeps ops float by TensorFlow's selective quantization, int16x8 through ai-edge-quantizer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_flex_ops: bool = Field(
        False,
        description="Accept Select-TF (Flex) ops in the .tflite (the app must then link the select-ops library); "
        "off, any Flex or custom op fails the build naming the op and its ONNX node.",
    )
    keep_float_states: dict[Literal["int8", "int16x8"], tuple[str, ...]] = Field(
        default_factory=dict,
        description="State inputs (e.g. c_in) whose recurrence stays float: every op on a path from the "
        "state input to its state output, and every op reading such a value. Holds for any chunk length, unlike node names.",
    )
    keep_float_frontends: dict[Literal["int8", "int16x8"], tuple[str, ...]] = Field(
        default_factory=dict,
        description="Chunk inputs (raw PCM) whose front end stays float: every op on a path from the input "
        "to the spectrum's log, the log included (found by structure).",
    )
    keep_float: dict[Literal["int8", "int16x8"], tuple[str, ...]] = Field(
        default_factory=dict,
        description="ONNX node names (or shell-style patterns, e.g. node_Conv_*) whose ops stay float, e.g. a recurrent "
        "cell-state update that 8 bits cannot hold. At int16x8 the file comes from ai-edge-quantizer instead of "
        "TensorFlow (whose selective quantization silently makes int8 of it); ops LiteRT has no 16x8 kernel for stay "
        "float there without a list.",
    )
