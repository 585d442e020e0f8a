"""A QDQ graph's boundary made integer: the graph takes and gives the quantized tensors themselves.

`quantize_static` writes float I/O (a QuantizeLinear after each input, a DequantizeLinear before
each output). A DSP integration wants the context binary's I/O in the integers HTP computes in,
with each tensor's scale and zero point in the contract: the app (or our session) quantizes the
chunk, dequantizes the outputs, and, where a state pair shares its encoding, feeds the integer
state straight back. Here the boundary Q/DQ pairs are folded into the graph's I/O; an input or
output the quantizer left float (one that feeds only data-movement ops, say) gets its own Q/DQ
at the calibrated range.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from pipeline.contract import Quantization
from pipeline.errors import InternalError

if TYPE_CHECKING:
    import onnx

INTEGER_TYPES = {2: "uint8", 3: "int8", 4: "uint16", 5: "int16"}  # onnx.TensorProto elem types


def _initializer(graph: "onnx.GraphProto", name: str) -> np.ndarray:
    from onnx import numpy_helper

    for tensor in graph.initializer:
        if tensor.name == name:
            return numpy_helper.to_array(tensor)
    raise InternalError(f"QDQ graph has no initializer {name!r}")


def _encoding(graph: "onnx.GraphProto", node: "onnx.NodeProto") -> Quantization:
    scale, zero_point = _initializer(graph, node.input[1]), _initializer(graph, node.input[2])
    if scale.size != 1:
        raise InternalError(f"boundary tensor of {node.name} is quantized per channel")
    return Quantization(scale=float(scale.reshape(())), zero_point=int(zero_point.reshape(())), dtype=zero_point.dtype.name)  # type: ignore[arg-type]


def _range_encoding(low: float, high: float, dtype: str) -> Quantization:
    """Asymmetric scale/zero point covering [low, high] and 0, as onnxruntime's quantizer computes it."""
    info = np.iinfo(dtype)
    low, high = min(low, 0.0), max(high, 0.0)
    scale = max(high - low, 1e-4) / (info.max - info.min)
    zero_point = int(np.clip(round(info.min - low / scale), info.min, info.max))
    return Quantization(scale=float(np.float32(scale)), zero_point=zero_point, dtype=dtype)  # type: ignore[arg-type]


def integer_boundary(
    model: "onnx.ModelProto", ranges: dict[str, dict], activation_dtype: str, states: dict[str, str] | None = None, dtypes: dict[str, str] | None = None
) -> dict[str, Quantization]:
    """Rewrite `model` in place so every graph input and output is an integer tensor; returns each one's encoding.

    `states` maps state inputs to their outputs: a state input the quantizer left float takes its output's
    encoding (the pair was calibrated to one range), so the integer state feeds back as is. `dtypes` gives the
    integer type of other float-left tensors that are not `activation_dtype` (a 16-bit island's).
    """
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    elem = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8, "uint16": TensorProto.UINT16, "int16": TensorProto.INT16}
    domain = "com.microsoft"  # 16-bit Q/DQ below opset 21 live there; onnxruntime's quantizer uses it too
    initializers = {t.name for t in graph.initializer}
    encodings: dict[str, Quantization] = {}

    def consumers(tensor: str) -> list:
        return [n for n in graph.node if tensor in n.input]

    def add_params(name: str, q: Quantization) -> tuple[str, str]:
        scale, zero = f"{name}_boundary_scale", f"{name}_boundary_zero_point"
        graph.initializer.append(numpy_helper.from_array(np.array(q.scale, dtype=np.float32), scale))
        graph.initializer.append(numpy_helper.from_array(np.array(q.zero_point, dtype=q.dtype), zero))
        return scale, zero

    for value in graph.output:
        name = value.name
        producer = next(n for n in graph.node if name in n.output)
        dequantized = f"{name}_dequantized"
        if producer.op_type == "DequantizeLinear":
            encodings[name] = _encoding(graph, producer)
            quantized = producer.input[0]
            for node in graph.node:  # the integer tensor takes the output's name; internal readers keep the float one
                node.output[:] = [name if t == quantized else t for t in node.output]
                node.input[:] = [name if t == quantized else (dequantized if t == name else t) for t in node.input]
            producer.output[:] = [dequantized]
            producer.input[0] = name
        else:
            encodings[name] = _range_encoding(ranges[name]["min"], ranges[name]["max"], (dtypes or {}).get(name, activation_dtype))
            scale, zero = add_params(name, encodings[name])
            for node in graph.node:
                node.output[:] = [dequantized if t == name else t for t in node.output]
                node.input[:] = [dequantized if t == name else t for t in node.input]
            graph.node.append(helper.make_node("QuantizeLinear", [dequantized, scale, zero], [name], name=f"{name}_boundary_q", domain=domain))
        value.type.tensor_type.elem_type = elem[encodings[name].dtype]
    for value in [i for i in graph.input if i.name not in initializers]:
        name, users = value.name, consumers(value.name)
        if len(users) == 1 and users[0].op_type == "QuantizeLinear" and users[0].input[0] == name:
            quantize = users[0]
            encodings[name] = _encoding(graph, quantize)
            for node in consumers(quantize.output[0]):
                node.input[:] = [name if t == quantize.output[0] else t for t in node.input]
            graph.node.remove(quantize)
        else:
            paired = (states or {}).get(name)
            if paired in encodings:
                encodings[name] = encodings[paired]
            else:
                encodings[name] = _range_encoding(ranges[name]["min"], ranges[name]["max"], (dtypes or {}).get(name, activation_dtype))
            scale, zero = add_params(name, encodings[name])
            dequantized = f"{name}_boundary_float"
            for node in users:
                node.input[:] = [dequantized if t == name else t for t in node.input]
            graph.node.insert(0, helper.make_node("DequantizeLinear", [name, scale, zero], [dequantized], name=f"{name}_boundary_dq", domain=domain))
        value.type.tensor_type.elem_type = elem[encodings[name].dtype]

    _sort_topologically(graph)
    return encodings


def _sort_topologically(graph: "onnx.GraphProto") -> None:
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(t in available for t in n.input)]
        if not ready:
            raise InternalError(f"QDQ graph has a cycle or a dangling input near {pending[0].name}")
        for node in ready:
            ordered.append(node)
            available.update(node.output)
            pending.remove(node)
    del graph.node[:]
    graph.node.extend(ordered)


def encodings_of(model: "onnx.ModelProto") -> dict[str, dict]:
    """Every quantized tensor of a QDQ graph, named by the float tensor it encodes: scale, offset and bit width.

    QNN writes an encoding as real = scale * (q + offset), so offset = -zero_point. Per-channel weights list
    a scale and offset per channel along `axis`.
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    found: dict[str, dict] = {}
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        weight = node.op_type == "DequantizeLinear" and node.input[0] in initializers
        if node.op_type == "QuantizeLinear" and node.output[0] in outputs:
            # the integer a graph output leaves in: a 16-bit island's 16->8-bit convert when its producer is inside one
            tensor = node.output[0]
        elif node.op_type == "QuantizeLinear":
            tensor = node.input[0].removesuffix("_QuantizeLinear_Input")  # the quantizer's name for a graph output's producer
        elif weight:
            tensor = node.input[0].removesuffix("_quantized")
        else:
            continue  # an activation's DequantizeLinear repeats its QuantizeLinear's encoding
        scale, zero_point = _initializer(graph, node.input[1]), _initializer(graph, node.input[2])
        entry: dict = {"kind": "constant" if weight else "activation", "dtype": zero_point.dtype.name, "bitwidth": zero_point.dtype.itemsize * 8}
        if scale.size == 1:
            entry |= {"scale": float(scale.reshape(())), "offset": -int(zero_point.reshape(()))}
        else:
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            entry |= {"axis": int(axis), "scale": [float(s) for s in scale], "offset": [-int(z) for z in zero_point]}
        if node.op_type == "QuantizeLinear" and node.output[0] in outputs:
            found[tensor] = entry
        else:
            found.setdefault(tensor, entry)
    return dict(sorted(found.items()))
