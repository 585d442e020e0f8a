"""Where a quantized .tflite keeps each recurrent state's integers, for the state-range guard.

The int8 and int16x8 files keep float32 I/O: a state output is a DEQUANTIZE of the quantized tensor that
holds the state (its range is that tensor's), and a state input is read by a QUANTIZE into the integer
domain. A state whose path stays float (`keep_float_states`) has neither: the guard records it as float.
Data-movement ops a converter may put between the I/O tensor and the (de)quantize are walked through.
"""

from __future__ import annotations

from pipeline.contract import Binding, Quantization
from pipeline.errors import InternalError
from pipeline.spec import StreamSpec
from pipeline.verify.state_guard import Encoded

# ops that move values without changing them: the encoding that limits a state may sit on the other side
MOVES = {"RESHAPE", "TRANSPOSE", "SQUEEZE", "EXPAND_DIMS", "STRIDED_SLICE", "SLICE", "GATHER"}
INTEGER_TYPES = {"INT8": "int8", "UINT8": "uint8", "INT16": "int16"}


def _encoding(graph, index: int, types: dict[int, str], variant: str) -> Quantization | None:
    tensor = graph.tensors[index]
    dtype = INTEGER_TYPES.get(types.get(tensor.type, ""))
    if dtype is None:
        return None
    q = tensor.quantization
    scales = list(q.scale) if q is not None and q.scale is not None else []
    zero_points = list(q.zeroPoint) if q is not None and q.zeroPoint is not None else [0]
    if len(scales) != 1:
        # states are activations, quantized per tensor; per-axis scales (quantizedDimension) belong to weights
        raise InternalError(
            f"{variant}: state tensor {tensor.name.decode()!r} has {len(scales)} quantization scales (axis "
            f"{q.quantizedDimension if q is not None else None}); the state-range guard expects one per tensor"
        )
    return Quantization(scale=float(scales[0]), zero_point=int(zero_points[0]), dtype=dtype)  # type: ignore[arg-type]


def state_encodings(tflite: bytes, spec: StreamSpec, bindings: dict[str, Binding], variant: str) -> tuple[dict[str, list[Encoded]], dict[str, list[Encoded]]]:
    """(state output -> the tensor its value is dequantized from, state input -> the QUANTIZEs reading it)."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.ModelT.InitFromPackedBuf(tflite, 0)
    graph = model.subgraphs[0]
    types = {code: name for name, code in vars(schema.TensorType).items() if not name.startswith("_")}
    builtin = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}

    def kind(op) -> str:
        code = model.operatorCodes[op.opcodeIndex]
        return builtin.get(max(code.builtinCode, code.deprecatedBuiltinCode), "UNKNOWN")

    producers = {int(t): op for op in graph.operators for t in op.outputs}
    readers: dict[int, list] = {}
    for op in graph.operators:
        for t in op.inputs:
            readers.setdefault(int(t), []).append(op)
    by_name = {graph.tensors[k].name.decode(): int(k) for k in (*graph.inputs, *graph.outputs)}

    def named(index: int) -> str:
        return graph.tensors[index].name.decode()

    outputs = {}
    for s in spec.states:
        index = by_name[bindings[s.output].name]
        while _encoding(graph, index, types, variant) is None and index in producers and kind(producers[index]) in MOVES | {"DEQUANTIZE"}:
            op, index = producers[index], int(producers[index].inputs[0])
            if kind(op) == "DEQUANTIZE":
                break
        outputs[s.output] = [Encoded(named(index), _encoding(graph, index, types, variant))]

    entries = {}
    for s in spec.states:
        frontier, found = [by_name[bindings[s.input].name]], []
        while frontier:
            index = frontier.pop()
            for op in readers.get(index, []):
                if kind(op) == "QUANTIZE":
                    found.append(Encoded(named(int(op.outputs[0])), _encoding(graph, int(op.outputs[0]), types, variant)))
                elif kind(op) in MOVES and _encoding(graph, int(op.outputs[0]), types, variant) is None:
                    frontier.append(int(op.outputs[0]))
        entries[s.input] = found
    return outputs, entries
