"""int16x8 with ops left float: ai-edge-quantizer on onnx2tf's float32 flatbuffer, inside the quantize subprocess.

TensorFlow's selective quantization silently makes int8 of an int16x8 file, so an int16x8 file that keeps
anything float (a recipe's ops, or ops LiteRT has no 16x8 kernel for) is built here instead: every op
int16 activations and int8 weights (ai-edge-quantizer's a16w8 rule), `no_quantize` for the kept ops'
output tensors and for the graph's inputs and outputs (float32 I/O: the app feeds float state back).

Ranges are the true min/max of every tensor over all recorded samples, measured here on the float
file: ai-edge-quantizer's own calibrator averages per-sample min/max, which with one-call samples
collapses a range a recurrent state reaches only occasionally (|c| ~ 300 came out far narrower).
"""

from __future__ import annotations

import re

import numpy as np

# ai-edge-quantizer's a16w8 rule, written out so its defaults cannot drift under us
_A16W8 = {
    "activation_tensor_config": {"num_bits": 16, "symmetric": True, "granularity": "TENSORWISE", "dtype": "INT"},
    "weight_tensor_config": {"num_bits": 8, "symmetric": True, "granularity": "CHANNELWISE", "dtype": "INT"},
    "compute_precision": "INTEGER",
    "explicit_dequantize": False,
    "skip_checks": False,
    "min_weight_elements": 0,
}
_DEQUANT_SUFFIX = "_dequant"  # how ai-edge-quantizer names the float tensor it writes after a graph output


def tensor_ranges(float_flatbuffer: bytes, samples: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """{tensor name: {"min", "max"}} over every sample, one call each, shaped as ai-edge-quantizer's QSVs
    ((1,) * rank); constants are skipped by the quantizer itself."""
    import warnings

    from ai_edge_litert.interpreter import Interpreter

    with warnings.catch_warnings():  # it warns that keeping every tensor costs memory: reading them all is the point
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors", category=UserWarning)
        interpreter = Interpreter(model_content=float_flatbuffer, experimental_preserve_all_tensors=True)
    interpreter.allocate_tensors()
    inputs = {d["name"]: d["index"] for d in interpreter.get_input_details()}
    tensors = [(d["name"], d["index"]) for d in interpreter.get_tensor_details()]
    low: dict[str, float] = {}
    high: dict[str, float] = {}
    rank: dict[str, int] = {}
    count = len(next(iter(samples.values())))
    for k in range(count):
        for name, values in samples.items():
            interpreter.set_tensor(inputs[name], values[k])
        interpreter.invoke()
        for name, index in tensors:
            try:
                value = interpreter.get_tensor(index)
            except ValueError:  # a tensor with no buffer (an optional input)
                continue
            if value.size == 0:
                continue
            # as ai-edge-quantizer's calibrator: a -inf padding constant must not set a range
            finite = value[np.abs(value) < 3e38] if value.dtype.kind == "f" else value
            if finite.size == 0:
                continue
            low[name] = min(low.get(name, np.inf), float(finite.min()))
            high[name] = max(high.get(name, -np.inf), float(finite.max()))
            rank[name] = value.ndim
    return {n: {"min": np.full((1,) * rank[n], low[n], np.float32), "max": np.full((1,) * rank[n], high[n], np.float32)} for n in low}


def mixed_recipe(keep_tensors: tuple[str, ...], float_ops: tuple[str, ...]) -> list[dict]:
    """a16w8 everywhere, then (later entries win) float graph I/O, the kept tensors' ops and whole op types."""
    rules = [{"regex": ".*", "operation": "*", "algorithm_key": "min_max_uniform_quantize", "op_config": _A16W8}]
    rules += [{"regex": ".*", "operation": op, "algorithm_key": "no_quantize", "op_config": {}} for op in ("INPUT", "OUTPUT", *float_ops)]
    # an op's scope is its output tensor names joined by ';', with a trailing ';'
    rules += [{"regex": f"(^|;){re.escape(t)};", "operation": "*", "algorithm_key": "no_quantize", "op_config": {}} for t in keep_tensors]
    return rules


def quantize_mixed(float_flatbuffer: bytes, ranges: dict, keep_tensors: tuple[str, ...], float_ops: tuple[str, ...]) -> bytes:
    from ai_edge_quantizer import quantizer

    made = quantizer.Quantizer(float_flatbuffer, mixed_recipe(keep_tensors, float_ops))
    result = made.quantize(ranges, enable_progress_report=False)
    return restore_output_names(bytes(result.quantized_model))


def restore_output_names(flatbuffer: bytes) -> bytes:
    """The float outputs get back the names onnx2tf gave them (`Identity`, `Identity_1`, ...), which the contract's
    bindings find; ai-edge-quantizer calls them `<name>_dequant` and leaves the name on the integer tensor.

    An output whose producer stays float but which also feeds a quantized op comes out of ai-edge-quantizer 0.10.0
    as the QUANTIZE op's integer tensor (measured: kws's h_out with its recurrence kept); it is pointed back at the
    float tensor that QUANTIZE reads."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    codes = [max(code.builtinCode, code.deprecatedBuiltinCode) for code in model.operatorCodes]
    for graph in model.subgraphs:
        quantized_from = {op.outputs[0]: op.inputs[0] for op in graph.operators if codes[op.opcodeIndex] == schema.BuiltinOperator.QUANTIZE}
        graph.outputs = [quantized_from.get(int(k), int(k)) for k in graph.outputs]
        names = [t.name.decode() if isinstance(t.name, bytes) else t.name for t in graph.tensors]
        index = {n: k for k, n in enumerate(names)}
        for k in graph.outputs:
            name = names[k]
            if name.endswith(_DEQUANT_SUFFIX) and name[: -len(_DEQUANT_SUFFIX)] in index:
                original = name[: -len(_DEQUANT_SUFFIX)]
                graph.tensors[index[original]].name = f"{original}_int16".encode()
                graph.tensors[k].name = original.encode()
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def float_compute_ops(flatbuffer: bytes) -> list[int]:
    """Indices of the main subgraph's ops that compute in float: every output float32, and not a DEQUANTIZE."""
    from ai_edge_litert import schema_py_generated as schema

    from pipeline.backends.litert.flatbuffer import read_ops

    graph = schema.Model.GetRootAsModel(flatbuffer, 0).Subgraphs(0)
    names = [name for name, _, _ in read_ops(flatbuffer)][: graph.OperatorsLength()]
    found = []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        outputs = [graph.Tensors(op.Outputs(j)).Type() for j in range(op.OutputsLength()) if op.Outputs(j) >= 0]
        if names[k] != "DEQUANTIZE" and outputs and all(t == schema.TensorType.FLOAT32 for t in outputs):
            found.append(k)
    return found
