"""What is inside a .tflite flatbuffer, where each op came from, and the builtin-ops gate.

TFLite op outputs are named after onnx2tf's Keras layers ('model/tf.math.multiply_2/Mul'); the
layer names map back to ONNX nodes through onnx2tf's debug log, which is how an op a user must
get rid of is traced to the node they can find in their own model.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import ToolchainError

ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
_ONNX_NODE = re.compile(r"onnx_op_type: (\S+) onnx_op_name: (.+?)\s*$")
_TF_OUTPUT = re.compile(r"output\.\d+\.\w+: name: (\S+?) shape")
_MODEL_PREFIX = re.compile(r"^model(_\d+)?/")


@dataclass(frozen=True)
class TfliteOp:
    op: str  # builtin name, or the custom code (FlexSplitV, ...) of a custom op
    custom: bool
    outputs: tuple[str, ...]  # TFLite tensor names the op writes
    onnx_nodes: tuple[str, ...]  # 'name (OpType)' of the ONNX nodes it came from, as far as onnx2tf's log tells


def read_ops(tflite: bytes) -> list[tuple[str, bool, tuple[str, ...]]]:
    """(op name, is custom, output tensor names) of every operator in every subgraph, from the flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema

    model = schema.Model.GetRootAsModel(tflite, 0)
    builtin = {code: name for name, code in vars(schema.BuiltinOperator).items() if not name.startswith("_")}
    ops = []
    for s in range(model.SubgraphsLength()):
        graph = model.Subgraphs(s)
        for k in range(graph.OperatorsLength()):
            op = graph.Operators(k)
            code = model.OperatorCodes(op.OpcodeIndex())
            name = builtin.get(max(code.BuiltinCode(), code.DeprecatedBuiltinCode()), "UNKNOWN")
            custom = name == "CUSTOM"
            if custom:
                name = (code.CustomCode() or b"?").decode()
            outputs = tuple(graph.Tensors(op.Outputs(j)).Name().decode() for j in range(op.OutputsLength()) if op.Outputs(j) >= 0)
            ops.append((name, custom, outputs))
    return ops


def onnx_nodes_by_layer(debug_log: str) -> dict[str, str]:
    """Keras layer name ('tf.math.multiply_2') -> 'onnx name (OpType)', from onnx2tf's `-v debug` log.

    TFLite op outputs are named after those layers ('model/tf.math.multiply_2/Mul'), so this is
    how an op in the flatbuffer is traced back to the ONNX node a user can find in their model.
    """
    layers: dict[str, str] = {}
    current = None
    for line in ANSI_ESCAPE.sub("", debug_log).splitlines():
        if m := _ONNX_NODE.search(line):
            current = f"{m.group(2)} ({m.group(1)})"
        elif current and (m := _TF_OUTPUT.search(line)):
            layers.setdefault(m.group(1).split("/")[0], current)
    return layers


def output_layers(tflite: bytes, onnx_path: Path) -> dict[str, str]:
    """Graph-output tensor name in the flatbuffer -> 'onnx node (OpType)' producing that output.

    Those tensors carry the output's name (`Identity_1`, `StatefulPartitionedCall:1`), not a layer's.
    """
    import onnx
    from ai_edge_litert import schema_py_generated as schema

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producers = {o: f"{n.name} ({n.op_type})" for n in graph.node for o in n.output}
    origins = [producers.get(o.name, o.name) for o in graph.output]
    model = schema.Model.GetRootAsModel(tflite, 0)
    main = model.Subgraphs(0)
    if model.SignatureDefsLength():
        signature = model.SignatureDefs(0)
        found = {}
        for k in range(signature.OutputsLength()):
            entry = signature.Outputs(k)
            key = entry.Name().decode()
            if key.startswith("output_") and key[7:].isdigit() and int(key[7:]) < len(origins):
                found[main.Tensors(entry.TensorIndex()).Name().decode()] = origins[int(key[7:])]
        return found
    return {("Identity" if k == 0 else f"Identity_{k}"): origin for k, origin in enumerate(origins)}


def attribute_ops(raw: list[tuple[str, bool, tuple[str, ...]]], layers: dict[str, str]) -> list[TfliteOp]:
    ops = []
    for name, custom, outputs in raw:
        parts = [_MODEL_PREFIX.sub("", p).split("/")[0] for o in outputs for p in o.split(";")] + list(outputs)
        ops.append(TfliteOp(name, custom, outputs, tuple(dict.fromkeys(layers[p] for p in parts if p in layers))))
    return ops


def check_builtin_ops(ops: list[TfliteOp], *, allow_flex: bool, variant: str, where: str) -> None:
    """The builtin-ops gate: a Select-TF (Flex) or custom op fails the build, naming it and its ONNX nodes."""
    custom = [op for op in ops if op.custom]
    if not custom or allow_flex:
        return
    lines = []
    for name, grouped in itertools.groupby(sorted(custom, key=lambda o: o.op), key=lambda o: o.op):
        group = list(grouped)
        nodes = sorted({n for op in group for n in op.onnx_nodes})
        origin = f"from ONNX node {', '.join(nodes)}" if nodes else f"TFLite tensor {', '.join(o for op in group for o in op.outputs)}"
        kind = "Select-TF (Flex) op" if name.startswith("Flex") else "custom op"
        lines.append(f"{name} x{len(group)} ({kind}, {origin})")
    raise ToolchainError(
        "the .tflite needs ops the LiteRT builtin runtime does not have: " + "; ".join(lines)
        + ". Add a legalize rewrite for the ONNX pattern (pipeline/backends/litert/legalize.py), change the model to avoid it, "
        "or set `litert.allow_flex_ops: true` in the manifest (the app must then link the Select-TF ops library)",
        tool="onnx2tf",
        stage=where,
        variant=variant,
        op=", ".join(sorted({op.op for op in custom})),
    )



def check_activation_type(tflite: bytes, precision: str, variant: str) -> None:
    """A quantized file must hold the integer type its name promises (a converter may fall back silently)."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAsModel(tflite, 0).Subgraphs(0)
    types = {graph.Tensors(k).Type() for k in range(graph.TensorsLength())}
    expected = schema.TensorType.INT16 if precision == "int16x8" else schema.TensorType.INT8
    if expected not in types or (precision == "int8" and schema.TensorType.INT16 in types):
        raise ToolchainError(
            f"the quantized file has tensor types {sorted(types)}, not the {precision} activations asked for "
            "(the converter fell back silently)",
            tool="tensorflow",
            variant=variant,
        )


def describe_op(index: int, op: TfliteOp) -> str:
    origin = f"from ONNX node {', '.join(op.onnx_nodes)}" if op.onnx_nodes else f"writing {', '.join(op.outputs)}"
    return f"op #{index} {op.op} ({origin})"


def zero_scale_ops(tflite: bytes) -> list[int]:
    """Indices of the main subgraph's ops that read an integer tensor whose quantization scale is 0."""
    from ai_edge_litert import schema_py_generated as schema

    graph = schema.Model.GetRootAsModel(tflite, 0).Subgraphs(0)
    found = []
    for k in range(graph.OperatorsLength()):
        op = graph.Operators(k)
        for j in range(op.InputsLength()):
            if op.Inputs(j) < 0:
                continue
            q = graph.Tensors(op.Inputs(j)).Quantization()
            if q is not None and q.ScaleLength() and float(np.min(q.ScaleAsNumpy())) <= 0:
                found.append(k)
                break
    return found
