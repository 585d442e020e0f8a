"""ONNX graph editing and structure queries shared by the backends' rewrites and quantizers.

`GraphEdit` gives producer/consumer lookups, inferred shapes and the few edits rewrites need;
`recurrence_nodes` finds, by graph structure, the nodes that carry a state's recurrence (so a
backend can keep them at higher precision, at any chunk length).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from pipeline.errors import InternalError, UserError
from pipeline.spec import StreamSpec

if TYPE_CHECKING:
    import onnx

ONNX_FILE = "model.onnx"


def check_onnx_io(path: Path, expected_inputs: list[str], expected_outputs: list[str], where: str) -> None:
    import onnx

    graph = onnx.load(str(path)).graph
    initializers = {i.name for i in graph.initializer}
    inputs = [i.name for i in graph.input if i.name not in initializers]
    outputs = [o.name for o in graph.output]
    if inputs != expected_inputs or outputs != expected_outputs:
        raise UserError(
            f"graph I/O is inputs {inputs} -> outputs {outputs}, the contract says {expected_inputs} -> {expected_outputs} "
            "(an output that is an input passed through, or two identical outputs, get renamed)",
            where=where,
        )


class GraphEdit:
    """Producer/consumer lookups over one ONNX graph, and the few edits the rewrites need."""

    def __init__(self, model: "onnx.ModelProto") -> None:
        import onnx

        self.model, self.graph = model, model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
        inferred = onnx.shape_inference.infer_shapes(model)
        self.shapes: dict[str, tuple[int | None, ...]] = {}
        for info in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output):
            dims = info.type.tensor_type.shape.dim
            self.shapes[info.name] = tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
        self.graph_outputs = {o.name for o in self.graph.output}
        self._names = {n.name for n in self.graph.node} | {t for n in self.graph.node for t in n.output}
        self._names |= {i.name for i in self.graph.initializer} | {i.name for i in self.graph.input}

    def producer(self, tensor: str) -> "onnx.NodeProto | None":
        return next((n for n in self.graph.node if tensor in n.output), None)

    def consumers(self, tensor: str) -> list["onnx.NodeProto"]:
        return [n for n in self.graph.node if tensor in n.input]

    def constant(self, tensor: str) -> np.ndarray | None:
        from onnx import numpy_helper

        for init in self.graph.initializer:
            if init.name == tensor:
                return numpy_helper.to_array(init)
        node = self.producer(tensor)
        if node is not None and node.op_type == "Constant":
            return numpy_helper.to_array(node.attribute[0].t) if node.attribute[0].name == "value" else None
        return None

    def attr(self, node: "onnx.NodeProto", name: str, default=None):
        from onnx import helper

        return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)

    def axes(self, node: "onnx.NodeProto") -> list[int] | None:
        """Unsqueeze/Squeeze axes, from the attribute (opset < 13) or the constant second input."""
        if len(node.input) > 1 and node.input[1]:
            value = self.constant(node.input[1])
            return None if value is None else [int(v) for v in np.ravel(value)]
        value = self.attr(node, "axes")
        return None if value is None else list(value)

    def fresh(self, base: str) -> str:
        name, k = base, 0
        while name in self._names:
            k += 1
            name = f"{base}_{k}"
        self._names.add(name)
        return name

    def int64(self, base: str, values: list[int]) -> str:
        from onnx import helper

        name = self.fresh(base)
        self.graph.initializer.append(helper.make_tensor(name, 7, [len(values)], values))  # 7 = INT64
        return name

    def node(self, op: str, inputs: list[str], outputs: list[str], name: str, **attrs) -> "onnx.NodeProto":
        from onnx import helper

        made = helper.make_node(op, inputs, outputs, name=self.fresh(name), **attrs)
        self.graph.node.append(made)
        return made

    def axes_node(self, op: str, tensor: str, axes: list[int], output: str, name: str) -> "onnx.NodeProto":
        if self.opset >= 13:
            return self.node(op, [tensor, self.int64(f"{name}/axes", axes)], [output], name)
        return self.node(op, [tensor], [output], name, axes=axes)

    def remove(self, nodes: list["onnx.NodeProto"]) -> None:
        for node in nodes:
            self.graph.node.remove(node)

    def finish(self) -> None:
        """Drop nodes whose results nothing uses, then restore topological order."""
        while True:
            used = {t for n in self.graph.node for t in n.input} | self.graph_outputs
            dead = [n for n in self.graph.node if not any(o in used for o in n.output)]
            if not dead:
                break
            self.remove(dead)
        available = {i.name for i in self.graph.input} | {i.name for i in self.graph.initializer} | {""}
        pending, ordered = list(self.graph.node), []
        while pending:  # stable: an already ordered graph comes out in the same order, in one pass
            deferred = []
            for n in pending:
                if all(i in available for i in n.input):
                    ordered.append(n)
                    available.update(n.output)
                else:
                    deferred.append(n)
            if len(deferred) == len(pending):
                raise InternalError(f"legalize left a cycle or a dangling input among {[n.name for n in pending][:5]}")
            pending = deferred
        del self.graph.node[:]
        self.graph.node.extend(ordered)



# ops a state's value passes through without being mixed across channels by a weight matrix
_CARRY_OPS = {"Mul", "Add", "Sub", "Neg", "Slice", "Concat", "Reshape", "Squeeze", "Unsqueeze", "Transpose", "Identity", "Gather"}
# element-wise functions whose input range the state sets (tanh(c) in an LSTM)
_UNARY_OPS = {"Tanh", "Sigmoid", "Relu", "Exp", "Log", "Abs", "Sqrt", "Clip", "Softplus", "Erf"}


def recurrence_path(nodes: list, state_in: str, state_out: str) -> list:
    """The element-wise/data-movement nodes (of topologically ordered `nodes`) on a path from a state input to its
    paired output that no weight matrix interrupts: the values that are the state, carried through one call."""
    carriers = [n for n in nodes if n.op_type in _CARRY_OPS]
    reaches_from = {state_in}
    for node in carriers:
        if reaches_from.intersection(node.input):
            reaches_from.update(node.output)
    reaches_to = {state_out}
    for node in reversed(carriers):
        if reaches_to.intersection(node.output):
            reaches_to.update(i for i in node.input if i)
    return [n for n in carriers if reaches_from.intersection(n.input) and reaches_to.intersection(n.output)]


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
    chosen: dict[str, None] = {}
    for state_in in state_inputs:
        on_path = recurrence_path(nodes, state_in, pairs[state_in])
        if not on_path:
            raise UserError(
                f"{variant}: keep_float_states: no element-wise path leads from {state_in!r} to {pairs[state_in]!r}",
                where=where,
                hint="name the ONNX nodes to keep instead",
            )
        values = {o for n in on_path for o in n.output} | {state_in}
        readers = [n for n in nodes if n.op_type in _UNARY_OPS and values.intersection(n.input)]
        chosen.update(dict.fromkeys(n.name for n in on_path + readers))
    return tuple(chosen)




# the op that ends a front end: a spectrum's log (a root or a power also sits in every layer norm, so neither does)
_COMPRESSING_OPS = {"Log"}


def frontend_nodes(onnx_path: Path, inputs: tuple[str, ...], variant: str, where: str, *, include_log: bool = True) -> tuple[str, ...]:
    """ONNX nodes of a model's own front end, found by graph structure: every node on a path from a chunk input (raw
    PCM) to the log of its spectrum, the log included unless `include_log` is off. Raw audio and
    a power spectrum span a range no 8-bit grid holds; after the log, they quantize like any feature."""
    import onnx

    nodes = list(onnx.load(str(onnx_path), load_external_data=False).graph.node)
    chosen: dict[str, None] = {}
    for name in inputs:
        reaches_from = {name}
        for node in nodes:  # topological order
            if reaches_from.intersection(node.input):
                reaches_from.update(node.output)
        logs = [n for n in nodes if n.op_type in _COMPRESSING_OPS and reaches_from.intersection(n.input)]
        if not logs:
            raise UserError(f"{variant}: no log of a spectrum follows input {name!r}: it has no front end to keep apart", where=where)
        # stop at the first compression on each path: what lies beyond the first log is the model, not its front end
        first = {o for n in logs for o in n.input}
        reaches_to = set(first)
        for node in reversed(nodes):
            if reaches_to.intersection(node.output):
                reaches_to.update(i for i in node.input if i)
        on_path = [n for n in nodes if reaches_from.intersection(n.input) and reaches_to.intersection(n.output)]
        earliest = [n for n in logs if not reaches_to.intersection(n.output)]
        chosen.update(dict.fromkeys(n.name for n in on_path + (earliest if include_log else [])))
    return tuple(chosen)
