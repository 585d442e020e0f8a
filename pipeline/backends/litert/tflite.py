"""tflite: one LiteRT flatbuffer at one precision, derived from the shared onnx2tf conversion, builtin ops only.

- fp32 / fp16: onnx2tf's float32 and float16-weight files (float I/O);
- int8: int8 weights and activations;  int16x8: int16 activations, int8 weights; both from
  `TFLiteConverter.from_saved_model` on the conversion's SavedModel, calibrated on the calibrate
  stage's recorded (chunk, state) pairs, in a subprocess (quantize.py). Both keep float32 I/O, so
  state feeds back exactly and no app has to requantize it. An int16x8 file that keeps ops float
  (a recipe, or ops LiteRT has no 16x8 kernel for, found and listed) comes from ai-edge-quantizer
  instead (mixed.py): TensorFlow's selective quantization makes int8 of it.

Then the builtin-ops gate (a Select-TF/custom op fails the variant unless allowed), the contract
(each tensor's real name, shape and layout in the file), for int8/int16x8 the state-range guard
(each state output's quantized range must hold its state input's recorded range, `guard.json`;
see pipeline/verify/state_guard.py) and a numeric check against onnxruntime that catches a
mis-bound output at once.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import Field

from pipeline.backends.litert.bindings import calibration_samples, check_against_onnx, tflite_bindings
from pipeline.backends.litert.converted import SAVED_MODEL_DIR, converted_float, load_layers
from pipeline.backends.litert.flatbuffer import attribute_ops, check_activation_type, check_builtin_ops, output_layers, read_ops
from pipeline.backends.litert.mixed import float_compute_ops
from pipeline.backends.litert.quantize import QuantizeRequest, graph_outputs, quantize_in_subprocess
from pipeline.cache import Artifact
from pipeline.contract import Binding, read_contract, write_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import InternalError, UserError
from pipeline.onnx_graph import frontend_nodes, recurrence_nodes
from pipeline.spec import StreamSpec, format_ms
from pipeline.verify.records import RANGES_FILE, load_calibration

ARTIFACT = "model.tflite"
OPS_FILE = "ops.json"
CHECK_FILE = "check.json"
QUANTIZED = ("int8", "int16x8")


class TfliteConfig(StageConfig):
    precision: Literal["fp32", "fp16", "int8", "int16x8"] = Field(description="Weights/activations of the flatbuffer.")
    variant: str = Field(
        "", exclude=True, description="Variant name for messages, e.g. 'litert-int8@512smp' (not part of the key); '' names it from the chunk in ms."
    )
    allow_flex: bool = Field(False, description="Accept Select-TF (Flex) and custom ops instead of failing the build.")
    calibration_samples: int | None = Field(
        None, gt=0, description="Recorded (chunk, state) pairs used to calibrate int8/int16x8 (evenly spaced); None: all."
    )
    keep_float_states: tuple[str, ...] = Field(
        (), description="State inputs (int8, int16x8) whose recurrence (paths to the paired output, and their readers) stays float."
    )
    keep_float: tuple[str, ...] = Field(
        (), description="ONNX node names (or TFLite tensor names) whose ops stay float: int8 by selective quantization, int16x8 through ai-edge-quantizer."
    )
    keep_float_frontends: tuple[str, ...] = Field(
        (), description="Chunk inputs (raw PCM, int8 or int16x8) whose front end (every op on a path to the spectrum's log, the log included) stays float."
    )
    check_steps: int = Field(64, gt=0, description="Calls compared against onnxruntime to check the I/O binding.")
    timeout_seconds: int = Field(1800, gt=0, description="Longest one quantizer run may take.")


class TfliteStage(Stage):
    name = "tflite"
    # 4: guard.json, the state-range guard; 5: the recipe (contract `quantization`, ops.json); 6: int16x8 keeping ops float
    # (ai-edge-quantizer), ops without a 16x8 kernel float and listed; 7: check.json compares log-probability outputs as
    # probabilities (bindcheck)
    version = "7"
    tools = ("tensorflow", "ai-edge-litert", "ai-edge-quantizer", "onnx", "onnxruntime")
    Config = TfliteConfig

    @classmethod
    def run(cls, config: TfliteConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from pipeline.backends import get_backend  # its quantizer, which builds candidates with this stage
        from pipeline.quant.quantizer import with_recipe

        source, converted = inputs["model"].path, inputs["converted"].path
        contract = read_contract(source)
        quantized = config.precision in QUANTIZED
        config, recipe = with_recipe(get_backend("litert").load_quantizer(), config, inputs, config.precision) if quantized else (config, None)
        spec = contract.stream
        variant = config.variant or f"litert-{config.precision}@{format_ms(spec.chunk_ms)}ms"
        where = ctx.node_id
        if quantized and "calibration" not in inputs:
            raise InternalError(f"{variant}: a quantized tflite node was planned without a calibration input")
        if (config.keep_float or config.keep_float_states or config.keep_float_frontends) and not quantized:
            raise UserError(f"{variant}: keep_float lists apply to int8 and int16x8 only; an {config.precision} file is float already", where=where)

        layers = load_layers(converted)
        started = time.perf_counter()
        if not quantized:
            flatbuffer = converted_float(converted, config.precision).read_bytes()
        else:
            float_bindings = tflite_bindings(Interpreter(model_path=str(converted_float(converted, "fp32"))), spec, variant)
            recorded = load_calibration(inputs["calibration"].path)
            samples = calibration_samples(recorded, spec, float_bindings, config.calibration_samples)
            found = recurrence_nodes(source / contract.artifact, spec, config.keep_float_states, variant, where) if config.keep_float_states else ()
            if config.keep_float_frontends:
                found += frontend_nodes(source / contract.artifact, config.keep_float_frontends, variant, where)
            workdir = Path(tempfile.mkdtemp(prefix="speechport-quantize-"))
            try:
                request = QuantizeRequest(
                    saved_model=converted / SAVED_MODEL_DIR,
                    float_model=converted_float(converted, "fp32"),
                    samples=workdir / "samples.npz",
                    precision=config.precision,  # type: ignore[arg-type]
                    allow_flex=config.allow_flex,
                    keep_float=tuple(dict.fromkeys(config.keep_float)),
                    keep_float_found=tuple(dict.fromkeys(found)),
                    layers=layers,
                    graph_outputs=graph_outputs(source / contract.artifact),
                    variant=variant,
                    where=where,
                    output=workdir / "quantized.tflite",
                    error=workdir / "quantize-error.json",
                    route=workdir / "quantize-route.json",
                )
                flatbuffer, route = quantize_in_subprocess(request, samples, workdir, config.timeout_seconds)
            finally:
                shutil.rmtree(workdir, ignore_errors=True)
            check_activation_type(flatbuffer, config.precision, variant)
        seconds = time.perf_counter() - started

        ops = attribute_ops(read_ops(flatbuffer), layers | output_layers(flatbuffer, source / contract.artifact))
        if quantized:
            # which quantizer made the file, and the ops that compute in float in it (kept, or without a 16x8 kernel)
            recipe = {**recipe, **route, "float_ops": sorted({ops[k].op for k in float_compute_ops(flatbuffer)})}
            if route["tensorflow_refused"]:
                ctx.log(f"{variant}: TensorFlow cannot quantize {', '.join(route['tensorflow_refused'])} to 16x8; built by ai-edge-quantizer")
            if route["no_int16_kernel"]:
                ctx.log(f"{variant}: no int16x8 kernel in LiteRT for {', '.join(route['no_int16_kernel'])}: those ops stay float")
        listing = {
            "precision": config.precision,
            "recipe": recipe,
            "float_ops": [{"op": ops[k].op, "outputs": list(ops[k].outputs), "onnx": list(ops[k].onnx_nodes)} for k in float_compute_ops(flatbuffer)] if quantized else [],
            "histogram": dict(sorted(Counter(op.op for op in ops).items())),
            "custom_ops": sorted({op.op for op in ops if op.custom}),
            "ops": [{"op": op.op, "outputs": list(op.outputs), "onnx": list(op.onnx_nodes)} for op in ops],
        }
        (out / OPS_FILE).write_text(json.dumps(listing, indent=1) + "\n")
        check_builtin_ops(ops, allow_flex=config.allow_flex, variant=variant, where=where)
        (out / ARTIFACT).write_bytes(flatbuffer)
        bindings = tflite_bindings(Interpreter(model_path=str(out / ARTIFACT)), spec, variant)
        write_contract(
            out,
            contract.model_copy(
                update={"backend": "litert", "precision": config.precision, "artifact": ARTIFACT, "bindings": bindings, "quantization": recipe}
            ),
        )
        if quantized:
            check_state_guard(flatbuffer, spec, bindings, inputs["calibration"].path, out, config, variant, where)
        recorded_pairs = load_calibration(inputs["calibration"].path) if quantized else None
        if listing["custom_ops"]:  # allowed, but LiteRT's Python runtime has no Select-TF ops to run them with
            check = {"mode": "skipped", "reason": f"custom ops {listing['custom_ops']} cannot run here"}
            ctx.log(f"{variant}: not checked against onnxruntime: {check['reason']}")
        else:
            check = check_against_onnx(source, out, recorded_pairs, config.check_steps, config.precision, variant, where)
        (out / CHECK_FILE).write_text(json.dumps(check, indent=1) + "\n")
        worst = ", ".join(f"{k} {v:.2g}" for k, v in check.get("max_abs", {}).items()) or "-"
        ctx.log(f"{variant}: {len(ops)} ops ({seconds:.1f} s); max abs error vs onnxruntime: {worst}")


def check_state_guard(
    flatbuffer: bytes, spec: StreamSpec, bindings: dict[str, Binding], calibration: Path, out: Path, config: TfliteConfig, variant: str, where: str
) -> None:
    """Every state output's DEQUANTIZE source, and every QUANTIZE reading a state input, must hold the state
    input's recorded range: guard.json, or a UserError naming the tensor."""
    from pipeline.backends.litert.state_ranges import state_encodings
    from pipeline.verify.state_guard import guard

    ranges = json.loads((calibration / RANGES_FILE).read_text())["ranges"]
    outputs, entries = state_encodings(flatbuffer, spec, bindings, variant)

    def fix(short: list[str]) -> str:
        remedy = f"keep the state path float with `litert.keep_float_states: {{{config.precision}: {short}}}`"
        if config.precision == "int8":
            remedy += ", or build int16x8"
        return remedy + "; if the state reaches its range only between calibration samples, keep more (`calibration.max_samples`)"

    guard(spec.states, ranges, outputs, entries, out, variant=variant, where=where, fix=fix)
