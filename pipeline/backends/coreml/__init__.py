"""Core ML for iOS: `.mlpackage` ML Programs converted by coremltools from the trace stage's graph.

coremltools has no ONNX frontend: every variant converts the captured PyTorch graph itself (the
ExportedProgram, or the TorchScript fallback), with the contract's tensor names. fp32 and fp16 are
compute precisions; int8w quantizes the fp16 model's weights; w8a8 its activations too, calibrated
on the recorded (chunk, state) trajectories through speechport's MIL interpreter (coremltools'
own calibration calls `predict`, which needs macOS); `stateful` keeps the recurrent state inside
the model (iOS 18 `ct.StateType`, fp16 buffers). On macOS the session is Core ML itself; on
Linux, the MIL reference interpreter (`interpreter.py`), not Apple's kernels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.backends.base import Backend, Precision
from pipeline.backends.coreml.options import CoreMlOptions
from pipeline.verify.gates import FLOAT16, FLOAT32, INT8_ACTIVATIONS, INT8_WEIGHTS

# Core ML's fp32 kernels (and the interpreter's numpy/OpenBLAS ones) sum in another order than PyTorch's: one call of
# the attention example differs by 4.6e-5 of the logits' range (measured), against 1e-5 for onnxruntime. The closed
# loop is still held to 1e-4 absolute.
CORE_ML_FLOAT32 = FLOAT32.model_copy(update={"one_step_max_rel": 1e-4, "state_one_step_max_rel": 1e-4})
# fp16 here is fp16 arithmetic in every op, not fp16 weights over float32 activations: one call moves a state by a
# few fp16 steps (0.0050 of the range of the raw-PCM VAD's h at 40 ms, decisions 99.95 % equal; 0.0033 on the
# default LSTM), so the state bound is 1e-2; every other fp16 bound holds as it is
CORE_ML_FLOAT16 = FLOAT16.model_copy(update={"state_one_step_max_rel": 1e-2})

if TYPE_CHECKING:
    from pipeline.backends.base import Lowering


def lower(lowering: "Lowering", precision: str) -> str:
    from pipeline.backends.coreml.convert import CoreMlConfig, CoreMlStage
    from pipeline.dag import Node

    suffix = f"@{lowering.chunk.label}"
    options: CoreMlOptions = lowering.options
    inputs: tuple[tuple[str, str], ...] = (("model", lowering.traced),)
    if BACKEND.precision(precision).calibrated:
        inputs += (("calibration", lowering.calibration()),)
    config = CoreMlConfig(
        precision=precision,  # type: ignore[arg-type]
        variant=f"coreml-{precision}{suffix}",
        deployment_target="iOS18" if precision == "stateful" else options.deployment_target,
        compute_units=options.compute_units,
        # each option keys only the variants it changes
        weight_threshold=options.weight_threshold if precision in ("int8w", "w8a8") else None,
        calibration_samples=options.calibration_samples if precision == "w8a8" else None,
        keep_float_states=options.keep_float_states.get(precision, ()),  # type: ignore[call-overload]
        keep_fp16_ops=options.keep_fp16_ops.get(precision, ()),  # type: ignore[call-overload]
        keep_float_weights=options.keep_float_weights.get(precision, ()),  # type: ignore[call-overload]
        fp32_spectrum=options.fp32_spectrum and precision != "fp32",
    )
    recipe = lowering.search("coreml", precision, config, inputs)
    if recipe is not None:
        inputs += (("recipe", recipe),)
    return lowering.add(Node(f"coreml-{precision}{suffix}", CoreMlStage, config, inputs))


BACKEND = Backend(
    name="coreml",
    description="Core ML ML Programs (.mlpackage) for iOS, converted by coremltools from the captured PyTorch graph.",
    precisions=(
        Precision("fp32", "float32 weights and compute", CORE_ML_FLOAT32),
        Precision("fp16", "float16 weights and compute (what the Neural Engine runs), float32 I/O", CORE_ML_FLOAT16),
        Precision("int8w", "int8 weights (linear_quantize_weights), float16 compute", INT8_WEIGHTS),
        Precision("w8a8", "int8 weights and activations, float16 compute, activations calibrated on real speech", INT8_ACTIVATIONS, calibrated=True),
        Precision("stateful", "float16, the recurrent state held inside the model (iOS 18 StateType)", CORE_ML_FLOAT16, numerics="fp16"),
    ),
    tools=("coremltools", "torch"),
    lowering="pipeline.backends.coreml:lower",
    session="pipeline.backends.coreml.session:CoreMlSession",
    options=CoreMlOptions,
    device_latency=False,  # on Linux the MIL reference interpreter runs it; on macOS the session says so itself
    runtime_label="MIL reference interpreter (numpy), not Apple's kernels",
    quantizer="pipeline.backends.coreml.recipe:QUANTIZER",
)
