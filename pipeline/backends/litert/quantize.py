"""The two subprocesses of the tflite stage: onnx2tf, and TensorFlow's quantizer.

Both run out of process, offline (every HTTP(S) request goes to a dead proxy): onnx2tf is slow
to import and rewrites its input in place; TensorFlow's calibrator and LiteRT's kernels abort
the whole process on some bad quantizations (an all-zero constant quantized to scale 0), which
out of process becomes an error message naming the ops instead of a dead build.

    python -m pipeline.stages.tflite_quantize request.json     # the quantizer side
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import UserError
from pipeline.stages.tflite_ops import (
    ANSI_ESCAPE,
    describe_op,
    zero_scale_ops,
    attribute_ops,
    onnx_nodes_by_layer,
    read_ops,
)

if TYPE_CHECKING:
    from pipeline.stages.tflite import TfliteConfig


def _offline_env() -> dict[str, str]:
    env = dict(os.environ)
    # nothing may be downloaded: any HTTP(S) request goes to a closed local port and fails at once
    env.update({k: "http://127.0.0.1:9" for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY")})
    env.update({"NO_PROXY": "", "no_proxy": "", "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""})
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, (root, env.get("PYTHONPATH"))))
    return env


def _run(command: list[str], cwd: Path, timeout: int, what: str, variant: str, where: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(command, cwd=cwd, env=_offline_env(), capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise UserError(f"{variant}: {what} did not finish within {timeout} s", where=where, hint="raise timeout_seconds") from None


def _failure(done: subprocess.CompletedProcess) -> str:
    if done.returncode < 0:
        return f"killed by {signal.Signals(-done.returncode).name}"
    lines = [line.strip() for line in ANSI_ESCAPE.sub("", done.stdout + "\n" + done.stderr).splitlines() if line.strip()]
    errors = [line for line in lines if re.search(r"Error|ERROR|error:", line)]
    return f"exit {done.returncode}: " + " | ".join((errors or lines)[-4:])


def run_onnx2tf(onnx_path: Path, workdir: Path, timeout: int, variant: str, where: str) -> tuple[Path, str]:
    """onnx2tf on a private copy of the graph; returns its output folder and its debug log."""
    private = workdir / "model.onnx"
    shutil.copyfile(onnx_path, private)  # onnx2tf rewrites its input in place (it names unnamed nodes)
    # -osd: a SavedModel signature for the quantizer; -nuo: the graph is simplified already (and onnxsim is absent)
    command = [sys.executable, "-m", "onnx2tf", "-i", private.name, "-o", "saved_model", "-osd", "-nuo", "-v", "debug"]
    done = _run(command, workdir, timeout, "onnx2tf", variant, where)
    output = workdir / "saved_model"
    log = ANSI_ESCAPE.sub("", done.stdout + "\n" + done.stderr)
    unsupported = sorted(set(re.findall(r"'tf\.(\w+)' op is neither a custom op nor a flex op", log)))
    if unsupported:
        layers = onnx_nodes_by_layer(log)
        located = re.findall(r'callsite\("model/([^/"]+)/[^"]*"', log)
        nodes = sorted({layers[layer] for layer in located if layer in layers})
        raise UserError(
            f"{variant}: TensorFlow Lite has neither a builtin nor a Select-TF kernel for TF op(s) {', '.join(unsupported)}"
            + (f" (from ONNX node {', '.join(nodes)})" if nodes else ""),
            where=where,
            hint="change the model to avoid the op, or add a legalize rewrite (pipeline/stages/legalize.py) replacing it",
        )
    if done.returncode != 0 or not (output / "model_float32.tflite").is_file():
        raise UserError(
            f"{variant}: onnx2tf could not convert the legalized graph ({_failure(done)})",
            where=where,
            hint="the error names the ONNX node; a legalize rewrite (pipeline/stages/legalize.py) may avoid the pattern",
        )
    return output, log


def quantize_in_subprocess(
    workdir: Path, saved_model: Path, samples: dict[str, np.ndarray], config: "TfliteConfig", layers: dict[str, str], variant: str, where: str
) -> bytes:
    np.savez(workdir / "samples.npz", **samples)
    request = {
        "saved_model": str(saved_model),
        "samples": str(workdir / "samples.npz"),
        "precision": config.precision,
        "allow_flex": config.allow_flex,
        "keep_float": list(config.keep_float),
        "layers": layers,
        "graph_outputs": _graph_outputs(saved_model.parent / "model.onnx"),
        "variant": variant,
        "where": where,
        "output": str(workdir / "quantized.tflite"),
        "error": str(workdir / "quantize-error.txt"),
    }
    (workdir / "quantize.json").write_text(json.dumps(request))
    done = _run([sys.executable, "-m", "pipeline.stages.tflite_quantize", str(workdir / "quantize.json")], workdir, config.timeout_seconds, "the quantizer", variant, where)
    if (workdir / "quantize-error.txt").is_file():
        raise UserError((workdir / "quantize-error.txt").read_text())
    if done.returncode != 0 and (workdir / "quantized.tflite").is_file():
        # converted, then LiteRT died preparing it: its kernels abort instead of reporting some bad quantizations
        flatbuffer = (workdir / "quantized.tflite").read_bytes()
        ops = attribute_ops(read_ops(flatbuffer), layers)
        suspects = [describe_op(k, ops[k]) for k in zero_scale_ops(flatbuffer)]
        raise UserError(
            f"{variant}: LiteRT aborts while preparing the quantized file ({_failure(done)}); "
            + (f"ops with an input quantized to scale 0: {'; '.join(suspects[:6])}" if suspects else "the runtime named no op"),
            where=where,
            hint="a constant that is all zeros cannot be quantized; remove it from the model (x + 0), or keep the op float "
            "with `litert.keep_float`",
        )
    if done.returncode != 0 or not (workdir / "quantized.tflite").is_file():
        raise UserError(f"{variant}: the TFLite quantizer crashed ({_failure(done)})", where=where)
    return (workdir / "quantized.tflite").read_bytes()


def _graph_outputs(onnx_path: Path) -> dict[str, str]:
    """ONNX output name, and the node producing it, -> signature key 'output_k' (their tensors have no layer name)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    keys = {o.name: f"output_{k}" for k, o in enumerate(graph.output)}
    return keys | {n.name: keys[o] for n in graph.node for o in n.output if o in keys and n.name}


def _smoke_test(path: Path, samples: dict[str, np.ndarray], layers: dict[str, str], allow_flex: bool, variant: str, where: str) -> None:
    """Load and run the quantized file once, in the subprocess: some LiteRT kernels abort, others refuse a dtype."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    if allow_flex and any(custom for _, custom, _ in read_ops(path.read_bytes())):
        return  # this runtime has no Select-TF ops; the file can only be run where they are linked
    interpreter.allocate_tensors()
    signature = next(iter(interpreter._get_full_signature_list().values()))
    for name, values in samples.items():
        interpreter.set_tensor(signature["inputs"][name], values[0])
    try:
        interpreter.invoke()
    except RuntimeError as exc:
        message = " ".join(str(exc).split())
        ops = attribute_ops(read_ops(path.read_bytes()), layers)
        node = re.search(r"Node number (\d+) \((\w+)\)", message)
        culprit = f" - {describe_op(int(node.group(1)), ops[int(node.group(1))])}" if node and int(node.group(1)) < len(ops) else ""
        raise UserError(
            f"{variant}: LiteRT cannot run the quantized file: {message}{culprit}",
            where=where,
            hint="a legalize rewrite can avoid the op, or `litert.keep_float` can leave it in float",
        ) from None


def _quantize(request: dict) -> bytes:
    """Runs in the subprocess: int8 or int16x8 with float32 I/O, calibrated on the recorded samples."""
    import tensorflow as tf

    samples = dict(np.load(request["samples"]))
    count = len(next(iter(samples.values())))
    precision, keep_float, variant, where = request["precision"], tuple(request["keep_float"]), request["variant"], request["where"]

    def representative():
        for k in range(count):
            yield {name: values[k] for name, values in samples.items()}

    def converter(quantized: bool):
        made = tf.lite.TFLiteConverter.from_saved_model(request["saved_model"])
        ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
        if quantized:
            made.optimizations = [tf.lite.Optimize.DEFAULT]
            made.representative_dataset = representative
            full = {"int8": tf.lite.OpsSet.TFLITE_BUILTINS_INT8, "int16x8": tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8}
            # float fallback only where ops are deliberately kept float; otherwise an op without an integer kernel fails here
            ops = [full[precision]] + ops * bool(keep_float)
        made.target_spec.supported_ops = ops + [tf.lite.OpsSet.SELECT_TF_OPS] * bool(request["allow_flex"])
        return made

    try:
        if not keep_float:
            return converter(True).convert()
        # selective quantization: the quantization debugger's deny list (op output tensors of this very
        # conversion's float model) leaves those ops float, with (de)quantize ops around them
        deny = _keep_float_tensors(keep_float, converter(False).convert(), request["layers"], request["graph_outputs"], variant, where)
        options = tf.lite.experimental.QuantizationDebugOptions(denylisted_nodes=list(deny))
        debugger = tf.lite.experimental.QuantizationDebugger(converter=converter(True), debug_dataset=representative, debug_options=options)
        return debugger.get_nondebug_quantized_model()
    except UserError:
        raise
    except Exception as exc:  # the converter's message names the op it could not lower or quantize
        raise UserError(f"{variant}: quantizing failed: {type(exc).__name__}: {exc}", where=where) from None


def _keep_float_tensors(
    names: tuple[str, ...], float_flatbuffer: bytes, layers: dict[str, str], graph_outputs: dict[str, str], variant: str, where: str
) -> tuple[str, ...]:
    """keep_float entries (ONNX node, ONNX output or TFLite tensor names) -> output tensors of the float model's ops."""
    from ai_edge_litert.interpreter import Interpreter

    ops = attribute_ops(read_ops(float_flatbuffer), layers)
    signature = next(iter(Interpreter(model_content=float_flatbuffer)._get_full_signature_list().values()))["outputs"]
    tensor_names = {d["index"]: d["name"] for d in Interpreter(model_content=float_flatbuffer).get_output_details()}
    tensors: list[str] = []
    for name in names:
        hits = [o for op in ops if name in op.outputs or any(n.rsplit(" (", 1)[0] == name for n in op.onnx_nodes) for o in op.outputs]
        if not hits and name in graph_outputs:  # graph outputs are named by the signature, not after a layer
            hits = [tensor_names[signature[graph_outputs[name]]]]
        if not hits:
            known = sorted({n.rsplit(" (", 1)[0] for op in ops for n in op.onnx_nodes})
            raise UserError(
                f"{variant}: litert.keep_float names {name!r}, which is neither an ONNX node nor a TFLite tensor of the model",
                where=where,
                hint=f"ONNX nodes found: {', '.join(known[:30])}{' ...' if len(known) > 30 else ''}",
            )
        tensors += hits
    return tuple(dict.fromkeys(tensors))


def _quantize_main(request_path: str) -> int:
    request = json.loads(Path(request_path).read_text())
    try:
        Path(request["output"]).write_bytes(_quantize(request))
        samples = dict(np.load(request["samples"]))
        _smoke_test(Path(request["output"]), samples, request["layers"], request["allow_flex"], request["variant"], request["where"])
    except UserError as exc:
        Path(request["error"]).write_text(str(exc))
        return 1
    return 0


if __name__ == "__main__":  # the quantizer subprocess: python -m pipeline.stages.tflite_quantize request.json
    sys.exit(_quantize_main(sys.argv[1]))
