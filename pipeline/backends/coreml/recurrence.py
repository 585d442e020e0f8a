"""The MIL ops that carry a recurrent state from its input to its output, found by the program's structure.

The Core ML counterpart of `pipeline.onnx_graph.recurrence_nodes`: the element-wise and data-movement
ops on a path from a state input to its paired output that no weight interrupts (an LSTM's
c -> f*c -> f*c + i*g -> c_out), plus the element-wise functions reading those values (tanh(c)).
Found by structure, so one manifest entry (`keep_float_states: {w8a8: [c_in]}`) holds at every chunk
length and names no converter-generated op.
"""

from __future__ import annotations

from typing import Any

from pipeline.errors import UserError
from pipeline.spec import StreamSpec

CARRY_OPS = {"mul", "add", "sub", "slice_by_index", "concat", "reshape", "squeeze", "expand_dims", "transpose", "identity", "gather", "cast", "stack", "split"}
UNARY_OPS = {"tanh", "sigmoid", "relu", "exp", "log", "abs", "sqrt", "clip", "softplus", "erf"}


def _values(op: Any) -> list[Any]:
    values = []
    for value in op.inputs.values():
        values.extend(value if isinstance(value, (list, tuple)) else [value])
    return values


def recurrence_ops(program: Any, spec: StreamSpec, state_inputs: tuple[str, ...], variant: str, where: str) -> tuple[str, ...]:
    """Names of the ops of `program`'s main function carrying each named state's recurrence."""
    pairs = {s.input: s.output for s in spec.states}
    unknown = [name for name in state_inputs if name not in pairs]
    if unknown:
        raise UserError(f"{variant}: keep_float_states names {unknown}, which are not state inputs {list(pairs)}", where=where)
    main = program.functions["main"]
    operations = list(main.operations)  # topologically ordered
    carriers = [op for op in operations if op.op_type in CARRY_OPS]
    outputs = {var.name: var for var in main.outputs}
    chosen: dict[str, None] = {}
    for state_in in state_inputs:
        reaches_from = {id(main.inputs[state_in])}
        for op in carriers:
            if reaches_from.intersection(id(v) for v in _values(op)):
                reaches_from.update(id(v) for v in op.outputs)
        reaches_to = {id(outputs[pairs[state_in]])}
        for op in reversed(carriers):
            if reaches_to.intersection(id(v) for v in op.outputs):
                reaches_to.update(id(v) for v in _values(op))
        on_path = [op for op in carriers if reaches_from.intersection(id(v) for v in _values(op)) and reaches_to.intersection(id(v) for v in op.outputs)]
        if not on_path:
            raise UserError(
                f"{variant}: keep_float_states: no element-wise path leads from {state_in!r} to {pairs[state_in]!r} in the Core ML program",
                where=where,
            )
        values = {id(v) for op in on_path for v in op.outputs} | {id(main.inputs[state_in])}
        readers = [op for op in operations if op.op_type in UNARY_OPS and values.intersection(id(v) for v in _values(op))]
        chosen.update(dict.fromkeys(op.name for op in on_path + readers))
    return tuple(chosen)
