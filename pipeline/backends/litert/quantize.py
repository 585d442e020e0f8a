"""TensorFlow's quantizer, run in a subprocess on the convert stage's SavedModel.

TensorFlow's calibrator and LiteRT's kernels abort the whole process on some bad quantizations
(an all-zero constant quantized to scale 0); out of process that becomes an error naming the
ops. The stage and the subprocess talk through one typed request file.

    python -m pipeline.backends.litert.quantize request.json     # the subprocess side
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.backends.litert.flatbuffer import attribute_ops, describe_op, read_ops, zero_scale_ops
from pipeline.backends.litert.toolrun import failure_summary, run_tool
from pipeline.errors import ToolchainError, UserError


class QuantizeRequest(BaseModel):
    """Everything the quantizer subprocess needs, written as JSON next to the samples."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    saved_model: Path = Field(description="onnx2tf's SavedModel directory.")
    float_model: Path = Field(description="onnx2tf's float32 flatbuffer: what ai-edge-quantizer quantizes (int16x8 keeping ops float).")
    samples: Path = Field(description="npz of recorded (chunk, state) pairs in the artifact's layout, keyed by input name.")
    precision: Literal["int8", "int16x8"] = Field(description="Activation precision (weights are int8 in both).")
    allow_flex: bool = Field(description="Accept Select-TF ops.")
    keep_float: tuple[str, ...] = Field(description="ONNX node names (or TFLite tensor names) whose ops stay float.")
    keep_float_found: tuple[str, ...] = Field(
        (), description="ONNX nodes found by structure (a recurrence, a front end) whose ops stay float; a node onnx2tf folded away is skipped."
    )
    layers: dict[str, str] = Field(description="Keras layer -> ONNX node, from onnx2tf's log.")
    graph_outputs: dict[str, str] = Field(description="ONNX output (and producing node) name -> signature key.")
    variant: str = Field(description="Variant name, for messages.")
    where: str = Field(description="Stage node, for messages.")
    output: Path = Field(description="Where the quantized flatbuffer goes.")
    error: Path = Field(description="Where a failure is written as JSON (kind, message, tool, op).")
    route: Path = Field(description="Where the subprocess writes which quantizer made the file and the ops it left float for want of a kernel.")


class _Failure(Exception):
    def __init__(self, kind: Literal["user", "toolchain"], message: str, tool: str = "tensorflow", op: str | None = None) -> None:
        super().__init__(message)
        self.kind, self.message, self.tool, self.op = kind, message, tool, op


def quantize_in_subprocess(request: QuantizeRequest, samples: dict[str, np.ndarray], workdir: Path, timeout: int) -> tuple[bytes, dict]:
    """Write the request, run the quantizer subprocess, and turn every way it can fail into a named error; the file, and
    its route record (`quantizer`, `no_int16_kernel`)."""
    np.savez(request.samples, **samples)
    request_path = workdir / "quantize.json"
    request_path.write_text(request.model_dump_json())
    done = run_tool([sys.executable, "-m", "pipeline.backends.litert.quantize", str(request_path)], workdir, timeout, "tensorflow", request.variant, request.where)
    if request.error.is_file():
        failure = json.loads(request.error.read_text())
        if failure["kind"] == "user":
            raise UserError(f"{request.variant}: {failure['message']}", where=request.where)
        raise ToolchainError(failure["message"], tool=failure["tool"], stage=request.where, variant=request.variant, op=failure.get("op"))
    if done.returncode != 0 and request.output.is_file():
        # converted, then LiteRT died preparing it: its kernels abort instead of reporting some bad quantizations
        flatbuffer = request.output.read_bytes()
        ops = attribute_ops(read_ops(flatbuffer), request.layers)
        suspects = [describe_op(k, ops[k]) for k in zero_scale_ops(flatbuffer)]
        raise ToolchainError(
            f"LiteRT aborts while preparing the quantized file ({failure_summary(done)}); "
            + (f"ops with an input quantized to scale 0: {'; '.join(suspects[:6])}" if suspects else "the runtime named no op")
            + ". A constant that is all zeros cannot be quantized; remove it from the model (x + 0), or keep the op float with `litert.keep_float`",
            tool="ai-edge-litert",
            stage=request.where,
            variant=request.variant,
            op=", ".join(sorted({ops[k].op for k in zero_scale_ops(flatbuffer)})) or None,
        )
    if done.returncode != 0 or not request.output.is_file():
        raise ToolchainError(f"the TFLite quantizer crashed ({failure_summary(done)})", tool="tensorflow", stage=request.where, variant=request.variant)
    return request.output.read_bytes(), json.loads(request.route.read_text())


def graph_outputs(onnx_path: Path) -> dict[str, str]:
    """ONNX output name, and the node producing it, -> signature key 'output_k' (their tensors have no layer name)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    keys = {o.name: f"output_{k}" for k, o in enumerate(graph.output)}
    return keys | {n.name: keys[o] for n in graph.node for o in n.output if o in keys and n.name}


def _smoke_test(path: Path, samples: dict[str, np.ndarray], layers: dict[str, str], allow_flex: bool) -> None:
    """Load and run the quantized file once, in the subprocess: some LiteRT kernels abort, others refuse a dtype."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    if allow_flex and any(custom for _, custom, _ in read_ops(path.read_bytes())):
        return  # this runtime has no Select-TF ops; the file can only be run where they are linked
    interpreter.allocate_tensors()
    signatures = interpreter._get_full_signature_list()
    # TensorFlow's files have a signature; ai-edge-quantizer's keep onnx2tf's input names and none
    inputs = next(iter(signatures.values()))["inputs"] if signatures else {d["name"]: d["index"] for d in interpreter.get_input_details()}
    for name, values in samples.items():
        interpreter.set_tensor(inputs[name], values[0])
    try:
        interpreter.invoke()
    except RuntimeError as exc:
        message = " ".join(str(exc).split())
        ops = attribute_ops(read_ops(path.read_bytes()), layers)
        node = re.search(r"Node number (\d+) \((\w+)\)", message)
        culprit = f" - {describe_op(int(node.group(1)), ops[int(node.group(1))])}" if node and int(node.group(1)) < len(ops) else ""
        op = ops[int(node.group(1))].op if node and int(node.group(1)) < len(ops) else None
        raise _Failure(
            "toolchain",
            f"LiteRT cannot run the quantized file: {message}{culprit}; a legalize rewrite can avoid the op, "
            "or `litert.keep_float` can leave it in float",
            tool="ai-edge-litert",
            op=op,
        ) from None


def _quantize(request: QuantizeRequest) -> tuple[bytes, dict]:
    """Runs in the subprocess: int8 or int16x8 with float32 I/O, calibrated on the recorded samples; with the route
    record (which quantizer made the file, the ops left float for want of a 16x8 kernel)."""
    import tensorflow as tf

    samples = dict(np.load(request.samples))
    count = len(next(iter(samples.values())))
    precision, keep_float = request.precision, request.keep_float + request.keep_float_found

    def representative():
        for k in range(count):
            yield {name: values[k] for name, values in samples.items()}

    def converter(quantized: bool):
        made = tf.lite.TFLiteConverter.from_saved_model(str(request.saved_model))
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantized:
            made.optimizations = [tf.lite.Optimize.DEFAULT]
            made.representative_dataset = representative
            full = {"int8": tf.lite.OpsSet.TFLITE_BUILTINS_INT8, "int16x8": tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8}
            # float fallback only where ops are deliberately kept float; otherwise an op without an integer kernel fails here
            ops = [full[precision]] + ops * bool(keep_float)
        made.target_spec.supported_ops = ops + [tf.lite.OpsSet.SELECT_TF_OPS] * request.allow_flex
        return made

    stock = {"quantizer": "tensorflow", "tensorflow_refused": [], "no_int16_kernel": []}
    try:
        refused: list[str] = []
        if precision == "int16x8" and not keep_float:
            try:  # TensorFlow's converter first: a file that keeps nothing float comes out exactly as it always has
                return converter(True).convert(), stock
            except Exception as exc:
                # measured: TensorFlow 2.21 refuses SQRT at 16x8 although LiteRT 2.3 runs it; ai-edge-quantizer does not
                missing = re.search(r"16x8-bit not yet supported for op: '(\w+)'", " ".join(str(exc).split()))
                if not missing:
                    raise
                refused.append(missing.group(1).upper())
        if precision == "int16x8":
            return _quantize_mixed(request, samples, refused)
        if not keep_float:
            return converter(True).convert(), stock
        # selective quantization: the quantization debugger's deny list (op output tensors of this very
        # conversion's float model) leaves those ops float, with (de)quantize ops around them
        deny = _keep_float_tensors(request.keep_float, request.keep_float_found, converter(False).convert(), request.layers, request.graph_outputs)
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(deny))
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter(True), debug_dataset=representative, debug_options=options)
        return debugger.get_nondebug_quantized_model(), stock
    except _Failure:
        raise
    except Exception as exc:  # the converter's message names the op it could not lower or quantize
        message = " ".join(str(exc).split())
        op = re.search(r"\b(?:op|Op|operator)\W+([A-Z][A-Z0-9_]+)\b", message) or re.search(r"'tfl\.(\w+)'", message)
        raise _Failure("toolchain", f"quantizing to {precision} failed: {type(exc).__name__}: {message}", op=op.group(1).upper() if op else None) from None


# op types LiteRT may lack a 16x8 kernel for are found by preparing the file; this bounds the retries
_MAX_NO_KERNEL_OPS = 8


def _quantize_mixed(request: QuantizeRequest, samples: dict[str, np.ndarray], refused: list[str]) -> tuple[bytes, dict]:
    """int16x8 through ai-edge-quantizer: the kept ops float, and every op type LiteRT cannot prepare at 16x8 float too
    (found by preparing the file, one op type per attempt), listed in the route record with the op types TensorFlow's
    converter refused to quantize (why this route was taken for a file that keeps nothing)."""
    from ai_edge_quantizer import qtyping

    from pipeline.backends.litert.mixed import quantize_mixed, tensor_ranges

    float_flatbuffer = request.float_model.read_bytes()
    keep = request.keep_float + request.keep_float_found
    keep_tensors = _keep_float_tensors(request.keep_float, request.keep_float_found, float_flatbuffer, request.layers, request.graph_outputs) if keep else ()
    ranges = tensor_ranges(float_flatbuffer, samples)
    known = {op.value for op in qtyping.TFLOperationName}
    no_kernel: list[str] = []
    while True:
        flatbuffer = quantize_mixed(float_flatbuffer, ranges, keep_tensors, tuple(op for op in no_kernel if op in known))
        failed = _unprepared_op(flatbuffer, samples)
        if failed is None:
            return flatbuffer, {"quantizer": "ai-edge-quantizer", "tensorflow_refused": refused, "no_int16_kernel": sorted(no_kernel)}
        op, message = failed
        if op in no_kernel or op not in known or len(no_kernel) >= _MAX_NO_KERNEL_OPS:
            raise _Failure("toolchain", f"LiteRT cannot run the int16x8 file ai-edge-quantizer made: {message}", tool="ai-edge-quantizer", op=op)
        no_kernel.append(op)


def _unprepared_op(flatbuffer: bytes, samples: dict[str, np.ndarray]) -> tuple[str, str] | None:
    """(op type, LiteRT's message) of the op LiteRT cannot prepare or run in this file, or None if one call runs."""
    from ai_edge_litert.interpreter import Interpreter

    try:
        interpreter = Interpreter(model_content=flatbuffer)
        interpreter.allocate_tensors()
        inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
        for name, values in samples.items():
            interpreter.set_tensor(inputs[name], values[0])
        interpreter.invoke()
    except (RuntimeError, ValueError) as exc:
        message = " ".join(str(exc).split())
        node = re.search(r"Node number \d+ \((\w+)\)", message)
        return (node.group(1).upper() if node else "?"), message
    return None


def _keep_float_tensors(
    names: tuple[str, ...], found: tuple[str, ...], float_flatbuffer: bytes, layers: dict[str, str], graph_outputs: dict[str, str]
) -> tuple[str, ...]:
    """keep_float entries (ONNX node, ONNX output or TFLite tensor names, or shell-style patterns of them such as
    `node_Conv_*`, since exporters number nodes by graph size) -> output tensors of the float model's ops. `found`
    entries come from the graph's structure: one onnx2tf folded into another op (a reshape) has no op of its own."""
    from fnmatch import fnmatchcase

    from ai_edge_litert.interpreter import Interpreter

    ops = attribute_ops(read_ops(float_flatbuffer), layers)
    interpreter = Interpreter(model_content=float_flatbuffer)
    tensor_names = {d["index"]: d["name"] for d in interpreter.get_output_details()}
    signatures = interpreter._get_full_signature_list()
    if signatures:
        by_key = {key: tensor_names[index] for key, index in next(iter(signatures.values()))["outputs"].items()}
    else:  # onnx2tf's own float file: outputs are Identity, Identity_1, ... in ONNX order
        by_key = {f"output_{k}": "Identity" if k == 0 else f"Identity_{k}" for k in range(len(tensor_names))}
    tensors: list[str] = []
    for name in (*names, *found):
        hits = [
            o
            for op in ops
            if any(fnmatchcase(t, name) for t in op.outputs) or any(fnmatchcase(n.rsplit(" (", 1)[0], name) for n in op.onnx_nodes)
            for o in op.outputs
        ]
        if not hits:  # graph outputs are named by the signature, not after a layer
            hits = [by_key[key] for output, key in graph_outputs.items() if fnmatchcase(output, name)]
        if not hits and name in found:
            continue
        if not hits:
            known = sorted({n.rsplit(" (", 1)[0] for op in ops for n in op.onnx_nodes})
            raise _Failure(
                "user",
                f"litert.keep_float names {name!r}, which is neither an ONNX node nor a TFLite tensor of the model; "
                f"ONNX nodes found: {', '.join(known[:30])}{' ...' if len(known) > 30 else ''}",
            )
        tensors += hits
    return tuple(dict.fromkeys(tensors))


def _quantize_main(request_path: str) -> int:
    request = QuantizeRequest.model_validate_json(Path(request_path).read_text())
    try:
        flatbuffer, route = _quantize(request)
        request.output.write_bytes(flatbuffer)
        request.route.write_text(json.dumps(route))
        _smoke_test(request.output, dict(np.load(request.samples)), request.layers, request.allow_flex)
    except _Failure as failure:
        request.error.write_text(json.dumps({"kind": failure.kind, "message": failure.message, "tool": failure.tool, "op": failure.op}))
        return 1
    return 0


if __name__ == "__main__":  # the quantizer subprocess: python -m pipeline.backends.litert.quantize request.json
    sys.exit(_quantize_main(sys.argv[1]))
