"""Where an activation-quantized Core ML program keeps each recurrent state's integers, for the state-range guard.

coremltools' w8a8 puts a `quantize` -> `dequantize` pair (int8 or uint8, per-tensor scale and zero point)
around the activations it quantizes. A state output that is a `dequantize` (through the fp16 -> fp32 `cast`
and any data movement) carries that pair's range; one made by an op left in fp16 (`keep_float_states`, or
an output read inside the model) is float. A state input enters the integer domain at the first `quantize`
reading it (through its `cast`). int8w programs quantize no activations: every state comes out float.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.backends.coreml.mil_ops import np_dtype
from pipeline.contract import Quantization
from pipeline.errors import InternalError
from pipeline.spec import StreamSpec
from pipeline.verify.state_guard import Encoded

# ops that move values without changing them (a cast between fp16 and fp32 changes no range an int8 can hold)
MOVES = {"cast", "reshape", "squeeze", "expand_dims", "transpose", "identity", "slice_by_index", "gather"}


def _encoding(op: Any, variant: str) -> Quantization:
    """The encoding of a `quantize` or `dequantize` op: its integer side's dtype, its scale and zero point."""
    integer = op.outputs[0] if op.op_type == "quantize" else op.input
    scale = np.asarray(op.scale.val, dtype=np.float64)
    zero_point = np.zeros(1) if op.zero_point is None else np.asarray(op.zero_point.val)
    if scale.size != 1:
        # states are activations, quantized per tensor; per-axis scales belong to weights
        axis = op.axis.val if op.axis is not None else None
        raise InternalError(f"{variant}: {op.op_type} {op.name!r} on a state has {scale.size} scales (axis {axis}); the state-range guard expects one")
    return Quantization(scale=float(scale.reshape(-1)[0]), zero_point=int(zero_point.reshape(-1)[0]), dtype=np_dtype(integer).name)


def _parts(var: Any, variant: str) -> list[Encoded]:
    """The encodings `var`'s values come out of: back through data movement and through a concat's inputs
    (coremltools gives the tensors around a concat one shared range) to each `dequantize`, or float."""
    while var.op is not None and var.op.op_type in MOVES:
        var = var.op.x
    op = var.op
    if op is not None and op.op_type in ("concat", "stack"):
        return [part for value in op.values for part in _parts(value, variant)]
    if op is not None and op.op_type == "dequantize":
        # the dequantize's own scale: the pair may work in a rescaled domain (scale x 127 around an add)
        return [Encoded(op.input.op.name if op.input.op is not None else op.name, _encoding(op, variant))]
    return [Encoded(var.name, None)]


def state_encodings(program: Any, spec: StreamSpec, variant: str) -> tuple[dict[str, list[Encoded]], dict[str, list[Encoded]]]:
    """(state output -> the quantize/dequantize pairs it comes out of, or float; state input -> the quantizes reading it)."""
    main = program.functions["main"]
    by_name = {var.name: var for var in main.outputs}
    outputs = {}
    for s in spec.states:
        parts = _parts(by_name[s.output], variant)
        quantized = [p for p in parts if p.quantization is not None]
        # a concat of a float part and a dequantized one is limited by the dequantized part alone
        outputs[s.output] = quantized or [Encoded(s.output, None)]
    entries: dict[str, list[Encoded]] = {}
    for s in spec.states:
        frontier, found = [main.inputs[s.input]], []
        while frontier:
            for op in frontier.pop().child_ops:
                if op.op_type == "quantize":
                    found.append(Encoded(op.name, _encoding(op, variant)))
                elif op.op_type in MOVES:
                    frontier.append(op.outputs[0])
        entries[s.input] = found
    return outputs, entries
