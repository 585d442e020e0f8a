"""Qualcomm Hexagon DSP (QNN HTP): a QDQ graph (a8w8 or a16w8) compiled for HTP, a DLC and a context binary per SoC.

    simplify -> qnn-legalize (exact rewrites of ops HTP lacks) -> [quant-search] -> qnn-qdq (quantize_static, calibrated on recorded (chunk, state)
    pairs, with the searched or pinned recipe; state-range guard; integer I/O) -> qnn-htp (every node on HTP, CPU fallback disabled; model.dlc; EP-context
    model + QNN context binary per SoC; EP-context check)

Verified on the HTP simulator the onnxruntime-qnn wheel ships (no proxy: onnxruntime's CPU
execution provider running the same QDQ graph drifts away from HTP over a stream; its agreement
with the simulator is reported as a figure of its own). Simulator latency is no device's. The recipe
search (recipe.py) ranks its candidates on the CPU EP, for speed, and accepts a recipe only once the
simulator confirms it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.backends.base import Backend, Precision
from pipeline.backends.qnn.options import QnnOptions
from pipeline.verify.gates import INT8_ACTIVATIONS, INT16_ACTIVATIONS

if TYPE_CHECKING:
    from pipeline.backends.base import Lowering


def lower(lowering: "Lowering", precision: str) -> str:
    from pipeline.backends.qnn.htp import HtpConfig, HtpStage
    from pipeline.backends.qnn.legalize import QnnLegalizeConfig, QnnLegalizeStage
    from pipeline.backends.qnn.qdq import QdqConfig, QdqStage
    from pipeline.dag import Node

    suffix = f"@{lowering.chunk.label}"
    variant = f"qnn-{precision}{suffix}"
    options: QnnOptions = lowering.options
    calibration = lowering.calibration()
    qdq_config = QdqConfig(
        precision=precision,  # type: ignore[arg-type]
        variant=variant,
        per_channel=options.per_channel,
        calibration_samples=options.calibration_samples,
        state_headroom=options.state_headroom,
        sixteen_bit_states=options.sixteen_bit_states.get(precision, ()),  # type: ignore[call-overload]
        sixteen_bit=options.sixteen_bit.get(precision, ()),  # type: ignore[call-overload]
        sixteen_bit_frontends=options.sixteen_bit_frontends.get(precision, ()),  # type: ignore[call-overload]
        sixteen_bit_weights=options.sixteen_bit_weights.get(precision, ()),  # type: ignore[call-overload]
    )
    legalized = lowering.add(Node(f"qnn-legalize{suffix}", QnnLegalizeStage, QnnLegalizeConfig(), (("model", lowering.onnx()),)))
    qdq_inputs: tuple[tuple[str, str], ...] = (("model", legalized), ("calibration", calibration))
    # the search streams candidates on the CPU EP and confirms its choice on the simulator, for the SoC verify streams on
    recipe = lowering.search("qnn", precision, qdq_config, qdq_inputs, confirm={"soc": options.socs[0].model_dump()})
    if recipe is not None:
        qdq_inputs += (("recipe", recipe),)
    qdq = lowering.add(Node(f"qnn-qdq-{precision}{suffix}", QdqStage, qdq_config, qdq_inputs))
    htp_config = HtpConfig(socs=options.socs, variant=variant)
    return lowering.add(Node(f"qnn-htp-{precision}{suffix}", HtpStage, htp_config, (("model", qdq), ("calibration", calibration))))


BACKEND = Backend(
    name="qnn",
    description="Qualcomm Hexagon DSP: QDQ ONNX compiled for QNN HTP, a DLC and a QNN context binary per SoC.",
    precisions=(
        Precision("a8w8", "uint8 activations and weights, integer I/O", INT8_ACTIVATIONS, calibrated=True),
        Precision("a16w8", "uint16 activations, uint8 weights, integer I/O", INT16_ACTIVATIONS, calibrated=True),
    ),
    tools=("onnx", "onnxruntime", "onnxruntime-qnn"),
    lowering="pipeline.backends.qnn:lower",
    session="pipeline.backends.qnn.session:QnnSession",
    options=QnnOptions,
    device_latency=False,
    runtime_label="QNN HTP simulator (onnxruntime-qnn, x86)",
    figures="pipeline.backends.qnn.figures:figures",
    quantizer="pipeline.backends.qnn.recipe:QUANTIZER",
)
