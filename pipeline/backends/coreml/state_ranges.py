"""Where an activation-quantized Core ML program keeps each recurrent state's integers, for the state-range guard.

coremltools' w8a8 puts a `quantize` -> `dequantize` pair (int8 or uint8, per-tensor scale and zero point)
around the activations it quantizes. A state output that is a `dequantize` (through the fp16 -> fp32 `cast`
and any data movement) carries that pair's range; one made by an op left in fp16 (`keep_float_states`, or
an output read inside the model) is float. A state input enters the integer domain at the first `quantize`
reading it (through its `cast`). int8w programs quantize no activations: every state comes out float.

A multi-layer nn.LSTM's state [layers, batch, hidden] is sliced per layer on entry and concatenated from the
layers on exit, and each layer's part gets its own range. So each encoding carries the positions of the state
it holds (`Encoded.region`), found by running the data movement on an array of positions; the guard then holds
it to those positions' recorded range. Movement whose parameters are not constants gives no region (the
whole state's range, which is stricter).
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


def _const(op: Any, name: str) -> Any:
    var = getattr(op, name, None)
    return None if var is None else var.val


def _moved(op: Any, x: np.ndarray) -> np.ndarray | None:
    """What the data-movement `op` makes of `x` (an array shaped like its input), or None where a parameter is not
    a constant."""
    kind = op.op_type
    if kind in ("cast", "identity"):
        return x
    if kind == "reshape":
        shape = _const(op, "shape")
        return None if shape is None else x.reshape([int(d) for d in shape])
    if kind == "squeeze":
        axes = _const(op, "axes")
        return np.squeeze(x) if op.axes is None else (None if axes is None else np.squeeze(x, axis=tuple(int(a) for a in axes)))
    if kind == "expand_dims":
        axes = _const(op, "axes")
        return None if axes is None else np.expand_dims(x, tuple(int(a) for a in axes))
    if kind == "transpose":
        perm = _const(op, "perm")
        return None if perm is None else np.transpose(x, [int(a) for a in perm])
    if kind == "gather":
        indices, axis = _const(op, "indices"), _const(op, "axis")
        return None if indices is None else np.take(x, np.asarray(indices, np.int64), axis=int(axis or 0))
    if kind == "slice_by_index":
        begin, end = _const(op, "begin"), _const(op, "end")
        if begin is None or end is None:
            return None
        rank = x.ndim
        stride = _const(op, "stride")
        flags = {k: _const(op, k) for k in ("begin_mask", "end_mask", "squeeze_mask")}
        if any(v is None and getattr(op, k, None) is not None for k, v in flags.items()) or (stride is None and op.stride is not None):
            return None
        stride = [1] * rank if stride is None else [int(v) for v in stride]
        masks = {k: [False] * rank if v is None else [bool(b) for b in v] for k, v in flags.items()}
        index = tuple(
            slice(None if masks["begin_mask"][i] else int(begin[i]), None if masks["end_mask"][i] else int(end[i]), stride[i])
            for i in range(rank)
        )
        taken = x[index]
        squeezed = tuple(i for i in range(rank) if masks["squeeze_mask"][i])
        return np.squeeze(taken, axis=squeezed) if squeezed else taken
    return None


def _safely_moved(op: Any, x: np.ndarray) -> np.ndarray | None:
    try:
        return _moved(op, x)
    except (ValueError, IndexError, TypeError):  # parameters this emulation reads differently: no region
        return None


def _shape(var: Any) -> tuple[int, ...] | None:
    try:
        return tuple(int(d) for d in var.shape)
    except (TypeError, ValueError):  # a symbolic dimension
        return None


def _region(positions: np.ndarray | None) -> tuple[int, ...] | None:
    if positions is None:
        return None
    held = positions[positions >= 0]
    return tuple(sorted(set(held.ravel().tolist())))


def _parts(var: Any, variant: str, positions: np.ndarray | None) -> list[Encoded]:
    """The encodings `var`'s values come out of: back through data movement and through a concat's inputs
    (coremltools gives the tensors around a concat one shared range) to each `dequantize`, or float.
    `positions`: for each of `var`'s values, its position in the state output (-1: none), or None: unknown."""
    while var.op is not None and var.op.op_type in MOVES:
        op, source = var.op, var.op.x
        shape = _shape(source)
        if positions is not None and shape is not None:
            # where each of the source's values lands: move an array of the source's own positions, then map back
            moved = _safely_moved(op, np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape))
            if moved is not None and moved.size == positions.size:
                back = np.full(shape, -1, np.int64)
                back.reshape(-1)[moved.reshape(-1)] = positions.reshape(-1)
                positions = back
            else:
                positions = None
        else:
            positions = None
        var = source
    op = var.op
    if op is not None and op.op_type in ("concat", "stack"):
        if positions is None:
            return [part for value in op.values for part in _parts(value, variant, None)]
        axis = int(_const(op, "axis"))
        axis = axis + positions.ndim if axis < 0 else axis
        if op.op_type == "stack":
            pieces = [np.take(positions, i, axis=axis) for i in range(len(op.values))]
        else:
            sizes = [(_shape(value) or (None,) * positions.ndim)[axis] for value in op.values]
            pieces = np.split(positions, np.cumsum(sizes[:-1]).tolist(), axis=axis) if None not in sizes else [None] * len(sizes)
        return [part for value, piece in zip(op.values, pieces) for part in _parts(value, variant, piece)]
    if op is not None and op.op_type == "dequantize":
        # the dequantize's own scale: the pair may work in a rescaled domain (scale x 127 around an add)
        return [Encoded(op.input.op.name if op.input.op is not None else op.name, _encoding(op, variant), _region(positions))]
    return [Encoded(var.name, None, _region(positions))]


def state_encodings(program: Any, spec: StreamSpec, variant: str) -> tuple[dict[str, list[Encoded]], dict[str, list[Encoded]]]:
    """(state output -> the quantize/dequantize pairs it comes out of, or float; state input -> the quantizes reading it)."""
    main = program.functions["main"]
    by_name = {var.name: var for var in main.outputs}
    outputs = {}
    for s in spec.states:
        size = int(np.prod(s.shape))
        parts = _parts(by_name[s.output], variant, _positions(by_name[s.output], size))
        quantized = [p for p in parts if p.quantization is not None]
        # a concat of a float part and a dequantized one is limited by the dequantized part alone
        outputs[s.output] = [_whole(p, size) for p in quantized] or [Encoded(s.output, None)]
    entries: dict[str, list[Encoded]] = {}
    for s in spec.states:
        size = int(np.prod(s.shape))
        frontier: list[tuple[Any, np.ndarray | None]] = [(main.inputs[s.input], _positions(main.inputs[s.input], size))]
        found = []
        while frontier:
            var, positions = frontier.pop()
            for op in var.child_ops:
                if op.op_type == "quantize":
                    found.append(_whole(Encoded(op.name, _encoding(op, variant), _region(positions)), size))
                elif op.op_type in MOVES:
                    moved = None if positions is None else _safely_moved(op, positions)
                    frontier.append((op.outputs[0], moved))
        entries[s.input] = found
    return outputs, entries


def _positions(var: Any, size: int) -> np.ndarray | None:
    """Each value's position in the state, shaped as the program holds it (None: a shape not known here)."""
    shape = _shape(var)
    return None if shape is None or int(np.prod(shape)) != size else np.arange(size, dtype=np.int64).reshape(shape)


def _whole(side: Encoded, size: int) -> Encoded:
    """A side holding every value of its state has no region (the whole state's range applies)."""
    if side.region is not None and len(side.region) == size:
        return Encoded(side.tensor, side.quantization)
    return side
