"""tflite: the legalized ONNX graph -> one LiteRT flatbuffer at one precision, builtin ops only.

onnx2tf runs once per config, as a subprocess in a private temporary directory, offline (every
HTTP(S) request goes to a dead proxy). It writes a SavedModel plus fp32 and fp16 flatbuffers.
The quantized files come from `TFLiteConverter.from_saved_model` on that SavedModel, calibrated
on the calibrate stage's recorded (chunk, state) pairs, in a second subprocess (TensorFlow's
calibrator aborted the whole process once, in-process next to the LiteRT interpreter):

- fp32: onnx2tf's float32 file;  fp16: its float16-weight file (float I/O);
- int8: int8 weights and activations;  int16x8: int16 activations, int8 weights. Both keep
  float32 I/O, so state feeds back exactly and no app has to requantize it.

Then the builtin-ops gate (a Select-TF/custom op fails the build unless allowed), the contract
(each tensor's real name, shape and layout in the file) and a numeric check against onnxruntime
that catches a mis-bound output at once. Names, as onnx2tf 1.28.8 writes them: inputs keep their
ONNX names; float outputs are `Identity`, `Identity_1`, ... in ONNX order (no SignatureDef); the
quantized files' signature outputs `output_0`, `output_1`, ... are in ONNX order, while the raw
tensor order differs, so outputs are bound through the signature, never by raw order.
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import Field

from pipeline.cache import Artifact
from pipeline.contract import Binding, read_contract, write_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import InternalError, UserError
from pipeline.spec import StreamSpec
from pipeline.stages.tflite_ops import check_activation_type, attribute_ops, check_builtin_ops, onnx_nodes_by_layer, output_layers, read_ops
from pipeline.stages.tflite_quantize import quantize_in_subprocess, run_onnx2tf

ARTIFACT = "model.tflite"
OPS_FILE = "ops.json"
CHECK_FILE = "check.json"
QUANTIZED = ("int8", "int16x8")
# largest error of an output, as a fraction of max(1, largest |reference value|), a float file may show against
# onnxruntime. Quantized files get no bound here: their accuracy is verify's to judge over real speech, where a
# broken quantization shows up as a finding rather than as a crash of this stage.
FLOAT_BOUNDS = {"fp32": 1e-4, "fp16": 3e-2}


class TfliteConfig(StageConfig):
    precision: Literal["fp32", "fp16", "int8", "int16x8"] = Field(description="Weights/activations of the flatbuffer.")
    allow_flex: bool = Field(False, description="Accept Select-TF (Flex) and custom ops instead of failing the build.")
    calibration_samples: int | None = Field(
        None, gt=0, description="Recorded (chunk, state) pairs used to calibrate int8/int16x8 (evenly spaced); None: all."
    )
    keep_float_states: tuple[str, ...] = Field(
        (), description="int8 only: state inputs whose recurrence (paths to the paired output, and their readers) stays float."
    )
    keep_float: tuple[str, ...] = Field(
        (), description="int8 only: ONNX node names (or TFLite tensor names) whose ops stay float (selective quantization)."
    )
    check_steps: int = Field(64, gt=0, description="Calls compared against onnxruntime to check the I/O binding.")
    timeout_seconds: int = Field(1800, gt=0, description="Longest one onnx2tf or quantizer run may take.")


# --- bindings -----------------------------------------------------------------------------------------


def find_permutation(contract_shape: tuple[int, ...], artifact_shape: tuple[int, ...], what: str) -> tuple[int, ...] | None:
    """The axis order taking the contract's layout to the artifact's, None if identical; channels-last preferred."""
    if tuple(artifact_shape) == tuple(contract_shape):
        return None
    rank = len(contract_shape)
    candidates = [p for p in itertools.permutations(range(rank)) if tuple(contract_shape[i] for i in p) == tuple(artifact_shape)]
    if not candidates:
        raise InternalError(f"{what}: shape {list(artifact_shape)} in the .tflite is no transpose of the contract's {list(contract_shape)}")
    channels_last = (0, *range(2, rank), 1)
    return channels_last if channels_last in candidates else candidates[0]


def _io_details(interpreter, spec: StreamSpec) -> dict[str, dict]:
    """Contract name -> interpreter tensor detail: through the signature if the file has one, else onnx2tf's names."""
    details = {d["index"]: d for d in (*interpreter.get_input_details(), *interpreter.get_output_details())}
    signatures = interpreter._get_full_signature_list()  # the public get_signature_list() omits the tensor indices
    found: dict[str, dict] = {}
    if signatures:
        signature = next(iter(signatures.values()))
        found |= {n: details[signature["inputs"][n]] for n in spec.input_names if n in signature["inputs"]}
        keys = {n: f"output_{k}" for k, n in enumerate(spec.output_names)}
        found |= {n: details[signature["outputs"][key]] for n, key in keys.items() if key in signature["outputs"]}
    else:
        by_name = {d["name"]: d for d in details.values()}
        keys = {n: "Identity" if k == 0 else f"Identity_{k}" for k, n in enumerate(spec.output_names)}
        found |= {n: by_name[n] for n in spec.input_names if n in by_name}
        found |= {n: by_name[key] for n, key in keys.items() if key in by_name}
    missing = [n for n in (*spec.input_names, *spec.output_names) if n not in found]
    if missing:
        names = sorted(d["name"] for d in details.values())
        raise InternalError(f"cannot find {missing} among the .tflite I/O tensors {names} (signatures: {signatures})")
    return found


def _bindings(interpreter, spec: StreamSpec, variant: str) -> dict[str, Binding]:
    shapes = {i.name: i.shape for i in spec.inputs} | {o.name: o.shape for o in spec.outputs}
    shapes |= {s.input: s.shape for s in spec.states} | {s.output: s.shape for s in spec.states}
    bindings = {}
    for name, detail in _io_details(interpreter, spec).items():
        if np.dtype(detail["dtype"]).kind != "f":
            raise InternalError(f"{variant}: {name} has {np.dtype(detail['dtype']).name} I/O; this stage writes float I/O")
        shape = tuple(int(d) for d in detail["shape"])
        permutation = find_permutation(shapes[name], shape, f"{variant}: {name}")
        bindings[name] = Binding(name=detail["name"], shape=shape, dtype=np.dtype(detail["dtype"]).name, permutation=permutation)
    return {name: bindings[name] for name in (*spec.input_names, *spec.output_names)}


def _calibration_samples(calibration: Path, spec: StreamSpec, bindings: dict[str, Binding], limit: int | None) -> dict[str, np.ndarray]:
    """Recorded pairs in the artifact's layout, keyed by graph input name (the SavedModel signature's keys)."""
    from pipeline.stages.calibrate import load_calibration

    recorded = load_calibration(calibration)
    count = len(recorded[spec.input_names[0]])
    keep = np.unique(np.linspace(0, count - 1, min(limit or count, count)).round().astype(int))
    samples = {}
    for name in spec.input_names:
        values, perm = recorded[name][keep].astype(np.float32), bindings[name].permutation
        samples[name] = values if perm is None else np.ascontiguousarray(np.transpose(values, (0, *(p + 1 for p in perm))))
    return samples


# --- the check against onnxruntime ------------------------------------------------------------------


def check_against_onnx(
    onnx_dir: Path, tflite_dir: Path, recorded: dict[str, np.ndarray] | None, steps: int, precision: str, variant: str, where: str
) -> dict:
    """Outputs of the .tflite (through its contract) against onnxruntime's: a wrong binding fails here, loudly.

    With recorded (chunk, state) pairs: one call per pair. Without: synthetic chunks, onnxruntime
    feeding back its own state and the .tflite called on the same state each time.
    Two outputs of one shape bound the wrong way round match each other's reference better than
    their own, whatever the precision; float files must also stay within FLOAT_BOUNDS.
    """
    from pipeline.runtimes import open_session

    reference, candidate = open_session("onnxruntime", onnx_dir), open_session("litert", tflite_dir)
    spec, names = reference.stream, reference.stream.output_names
    shape = {n: reference.contract.bindings[n].shape for n in names}
    pairs = [(a, b) for a in names for b in names if a != b and shape[a] == shape[b]]
    error, crossed, magnitude = dict.fromkeys(names, 0.0), dict.fromkeys(pairs, 0.0), dict.fromkeys(names, 0.0)
    rng = np.random.default_rng(0)
    count = steps if recorded is None else min(steps, len(recorded[spec.input_names[0]]))
    picks = None if recorded is None else np.linspace(0, len(recorded[spec.input_names[0]]) - 1, count).round().astype(int)
    for k in range(count):
        if picks is not None:
            a = reference.call({n: recorded[n][picks[k]] for n in spec.input_names})  # type: ignore[index]
            b = candidate.call({n: recorded[n][picks[k]] for n in spec.input_names})  # type: ignore[index]
        else:
            scale = 0.1 if spec.frontend.kind == "pcm" else 2.0
            chunk = {i.name: (rng.standard_normal(i.shape) * scale).astype(np.float32) for i in spec.inputs}
            # both start each call from onnxruntime's state: the bound is on one call, not on a random-input trajectory
            feeds, a = reference.advance(chunk)
            b = candidate.call(feeds)
        for n in names:
            error[n] = max(error[n], float(np.abs(a[n] - b[n]).max()))
            magnitude[n] = max(magnitude[n], float(np.abs(a[n]).max()))
        for x, y in pairs:
            crossed[(x, y)] = max(crossed[(x, y)], float(np.abs(a[x] - b[y]).max()))
    problems = [
        f"{x} matches the tensor bound to {y} better ({crossed[(x, y)]:.3g}) than its own ({error[x]:.3g})"
        for x, y in pairs
        if crossed[(x, y)] < 0.5 * error[x]
    ]
    for n in names:
        bound = FLOAT_BOUNDS.get(precision, np.inf) * max(1.0, magnitude[n])
        if not error[n] <= bound:
            b_ = candidate.contract.bindings[n]
            problems.append(
                f"{n} (.tflite tensor {b_.name!r}, shape {list(b_.shape)}, {b_.dtype}): max abs error {error[n]:.3g} "
                f"against onnxruntime exceeds {bound:.3g} (largest |value| {magnitude[n]:.3g})"
            )
    if problems:
        mode = "recorded calibration pairs" if recorded is not None else "synthetic chunks on onnxruntime's state"
        raise InternalError(f"{variant} ({where}): the .tflite does not reproduce the ONNX graph over {count} {mode}: " + "; ".join(problems))
    mode = "recorded_pairs" if recorded is not None else "synthetic_on_reference_state"
    return {"mode": mode, "calls": count, "max_abs": error, "max_abs_reference": magnitude}


# ops a state's value passes through without being mixed across channels by a weight matrix
_CARRY_OPS = {"Mul", "Add", "Sub", "Neg", "Slice", "Concat", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Gather"}
# element-wise functions whose input range the state sets (tanh(c) in an LSTM)
_UNARY_OPS = {"Tanh", "Sigmoid", "Relu", "Exp", "Log", "Abs", "Sqrt", "Clip", "Softplus", "Erf"}


def recurrence_nodes(onnx_path: Path, spec: StreamSpec, state_inputs: tuple[str, ...], variant: str, where: str) -> tuple[str, ...]:
    """ONNX nodes carrying a state's recurrence, found by graph structure (so one manifest entry holds
    at every chunk length): the element-wise/data-movement nodes on a path from the state input to its
    paired output that no weight matrix interrupts (an LSTM's c -> f*c -> f*c + i*g -> ... -> c_out),
    plus the element-wise functions reading those values (tanh(c))."""
    import onnx

    pairs = {s.input: s.output for s in spec.states}
    unknown = [name for name in state_inputs if name not in pairs]
    if unknown:
        raise UserError(f"{variant}: keep_float_states names {unknown}, which are not state inputs {list(pairs)}", where=where)
    nodes = list(onnx.load(str(onnx_path), load_external_data=False).graph.node)
    carriers = [n for n in nodes if n.op_type in _CARRY_OPS]
    chosen: dict[str, None] = {}
    for state_in in state_inputs:
        reaches_from = {state_in}
        for node in carriers:  # ONNX nodes are topologically ordered
            if reaches_from.intersection(node.input):
                reaches_from.update(node.output)
        reaches_to = {pairs[state_in]}
        for node in reversed(carriers):
            if reaches_to.intersection(node.output):
                reaches_to.update(i for i in node.input if i)
        on_path = [n for n in carriers if reaches_from.intersection(n.input) and reaches_to.intersection(n.output)]
        if not on_path:
            raise UserError(
                f"{variant}: keep_float_states: no element-wise path leads from {state_in!r} to {pairs[state_in]!r}",
                where=where,
                hint="name the ONNX nodes in litert.keep_float instead",
            )
        values = {o for n in on_path for o in n.output} | {state_in}
        readers = [n for n in nodes if n.op_type in _UNARY_OPS and values.intersection(n.input)]
        chosen.update(dict.fromkeys(n.name for n in on_path + readers))
    return tuple(chosen)


class TfliteStage(Stage):
    name = "tflite"
    version = "2"
    tools = ("onnx2tf", "tensorflow", "tf_keras", "ai-edge-litert", "onnx", "onnxruntime")
    Config = TfliteConfig

    @classmethod
    def run(cls, config: TfliteConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        from ai_edge_litert.interpreter import Interpreter

        from pipeline.stages.calibrate import load_calibration

        source = inputs["model"].path
        contract = read_contract(source)
        spec = contract.stream
        variant, where = f"litert-{config.precision}@{spec.chunk_ms}ms", f"stage tflite ({ctx.node_id})"
        quantized = config.precision in QUANTIZED
        if quantized and "calibration" not in inputs:
            raise InternalError(f"{variant}: a quantized tflite node was planned without a calibration input")
        if (config.keep_float or config.keep_float_states) and config.precision != "int8":
            # measured: the quantization debugger's selective model has int8 activations whatever the ops set
            raise UserError(f"{variant}: keep_float applies to int8 only (selective quantization cannot make int16x8)", where=where)

        workdir = Path(tempfile.mkdtemp(prefix="speechport-tflite-"))
        try:
            started = time.perf_counter()
            converted, log = run_onnx2tf(source / contract.artifact, workdir, config.timeout_seconds, variant, where)
            seconds = {"onnx2tf": time.perf_counter() - started}
            layers = onnx_nodes_by_layer(log)
            if not quantized:
                flatbuffer = (converted / f"model_float{config.precision[2:]}.tflite").read_bytes()
            else:
                float_bindings = _bindings(Interpreter(model_path=str(converted / "model_float32.tflite")), spec, variant)
                samples = _calibration_samples(inputs["calibration"].path, spec, float_bindings, config.calibration_samples)
                started = time.perf_counter()
                keep = config.keep_float + recurrence_nodes(source / contract.artifact, spec, config.keep_float_states, variant, where)
                merged = config.model_copy(update={"keep_float": tuple(dict.fromkeys(keep))})
                flatbuffer = quantize_in_subprocess(workdir, converted, samples, merged, layers, variant, where)
                check_activation_type(flatbuffer, config.precision, variant)
                seconds["quantize"] = time.perf_counter() - started
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

        ops = attribute_ops(read_ops(flatbuffer), layers | output_layers(flatbuffer, source / contract.artifact))
        listing = {
            "precision": config.precision,
            "histogram": dict(sorted(Counter(op.op for op in ops).items())),
            "custom_ops": sorted({op.op for op in ops if op.custom}),
            "ops": [{"op": op.op, "outputs": list(op.outputs), "onnx": list(op.onnx_nodes)} for op in ops],
        }
        (out / OPS_FILE).write_text(json.dumps(listing, indent=1) + "\n")
        check_builtin_ops(ops, allow_flex=config.allow_flex, variant=variant, where=where)
        (out / ARTIFACT).write_bytes(flatbuffer)
        bindings = _bindings(Interpreter(model_path=str(out / ARTIFACT)), spec, variant)
        write_contract(out, contract.model_copy(update={"backend": "litert", "precision": config.precision, "artifact": ARTIFACT, "bindings": bindings}))
        recorded = load_calibration(inputs["calibration"].path) if quantized else None
        if listing["custom_ops"]:  # allowed, but LiteRT's Python runtime has no Select-TF ops to run them with
            check = {"mode": "skipped", "reason": f"custom ops {listing['custom_ops']} cannot run here"}
            ctx.log(f"{variant}: not checked against onnxruntime: {check['reason']}")
        else:
            check = check_against_onnx(source, out, recorded, config.check_steps, config.precision, variant, where)
        (out / CHECK_FILE).write_text(json.dumps(check, indent=1) + "\n")
        timing = ", ".join(f"{k} {v:.1f} s" for k, v in seconds.items())
        worst = ", ".join(f"{k} {v:.2g}" for k, v in check.get("max_abs", {}).items()) or "-"
        ctx.log(f"{variant}: {len(ops)} ops ({timing}); max abs error vs onnxruntime: {worst}")
