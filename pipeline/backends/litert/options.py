"""The manifest's `litert:` section."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class LiteRtOptions(BaseModel):
    """The keep_float lists pin an int8 recipe by hand: with any of them set for int8, its recipe is not searched."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    allow_flex_ops: bool = Field(
        False,
        description="Accept Select-TF (Flex) ops in the .tflite (the app must then link the select-ops library); "
        "off, any Flex or custom op fails the build naming the op and its ONNX node.",
    )
    keep_float_states: dict[Literal["int8"], tuple[str, ...]] = Field(
        default_factory=dict,
        description="int8 only: state inputs (e.g. c_in) whose recurrence stays float: every op on a path from the "
        "state input to its state output, and every op reading such a value. Holds for any chunk length, unlike node names.",
    )
    keep_float_frontends: dict[Literal["int8"], tuple[str, ...]] = Field(
        default_factory=dict,
        description="int8 only: chunk inputs (raw PCM) whose front end stays float: every op on a path from the input "
        "to the spectrum's log, the log included (found by structure).",
    )
    keep_float: dict[Literal["int8"], tuple[str, ...]] = Field(
        default_factory=dict,
        description="int8 only: ONNX node names (or shell-style patterns, e.g. node_Conv_*) whose ops stay float "
        "(selective quantization), e.g. a recurrent "
        "cell-state update that 8 bits cannot hold. (TensorFlow's selective quantization silently makes int8 of an "
        "int16x8 file, so int16x8 takes no list.)",
    )
