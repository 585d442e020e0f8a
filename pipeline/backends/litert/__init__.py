"""LiteRT (TFLite) for Android: legalize -> onnx2tf once per chunk length -> one .tflite per precision.

fp32 and fp16 come from onnx2tf itself; int8 and int16x8 from TensorFlow's converter on the same
SavedModel, calibrated on (chunk, state) pairs the reference recorded on real speech. Builtin ops
only unless the manifest allows Flex ops. Verified on the LiteRT interpreter.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.backends.base import Backend, Precision
from pipeline.backends.litert.options import LiteRtOptions
from pipeline.verify.gates import FLOAT16, FLOAT32, INT8_ACTIVATIONS, INT16_ACTIVATIONS

if TYPE_CHECKING:
    from pipeline.backends.base import Lowering


def lower(lowering: "Lowering", precision: str) -> str:
    from pipeline.backends.litert.convert import ConvertConfig, ConvertStage
    from pipeline.backends.litert.legalize import LegalizeConfig, LegalizeStage
    from pipeline.backends.litert.tflite import TfliteConfig, TfliteStage
    from pipeline.dag import Node

    suffix = f"@{lowering.chunk.label}"
    legalized = lowering.add(Node(f"legalize{suffix}", LegalizeStage, LegalizeConfig(), (("model", lowering.onnx()),)))
    converted = lowering.add(Node(f"onnx2tf{suffix}", ConvertStage, ConvertConfig(), (("model", legalized),)))
    inputs: tuple[tuple[str, str], ...] = (("model", legalized), ("converted", converted))
    if BACKEND.precision(precision).calibrated:
        inputs += (("calibration", lowering.calibration()),)
    options: LiteRtOptions = lowering.options
    config = TfliteConfig(
        precision=precision,  # type: ignore[arg-type]
        variant=f"litert-{precision}{suffix}",
        allow_flex=options.allow_flex_ops,
        keep_float=options.keep_float.get(precision, ()),  # type: ignore[call-overload]
        keep_float_states=options.keep_float_states.get(precision, ()),  # type: ignore[call-overload]
        keep_float_frontends=options.keep_float_frontends.get(precision, ()),  # type: ignore[call-overload]
    )
    recipe = lowering.search("litert", precision, config, inputs)
    if recipe is not None:
        inputs += (("recipe", recipe),)
    return lowering.add(Node(f"tflite-{precision}{suffix}", TfliteStage, config, inputs))


BACKEND = Backend(
    name="litert",
    description="LiteRT (TFLite) flatbuffers for Android, converted by onnx2tf, builtin ops only.",
    precisions=(
        Precision("fp32", "float32 weights and activations", FLOAT32),
        Precision("fp16", "float16 weights, float32 activations", FLOAT16),
        Precision("int8", "int8 weights and activations, float32 I/O", INT8_ACTIVATIONS, calibrated=True),
        Precision("int16x8", "int8 weights, int16 activations, float32 I/O", INT16_ACTIVATIONS, calibrated=True),
    ),
    tools=("onnx2tf", "tensorflow", "tf_keras", "ai-edge-litert", "onnx", "onnxruntime"),
    lowering="pipeline.backends.litert:lower",
    session="pipeline.backends.litert.session:LiteRtSession",
    options=LiteRtOptions,
    runtime_label="LiteRT interpreter (CPU, XNNPACK)",
    quantizer="pipeline.backends.litert.recipe:QUANTIZER",
)
