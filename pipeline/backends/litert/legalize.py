"""legalize: ONNX -> ONNX rewrites of patterns that onnx2tf lowers badly, each checked numerically.

onnx2tf turns some ONNX patterns into Select-TF (Flex) ops, which the LiteRT builtin runtime
cannot load, or into graphs it cannot lay out. Each rewrite here replaces one such pattern with
an equivalent that lowers to builtin ops:

- `split_to_slice`: `Split` (explicit sizes or equal parts) -> one `Slice` per output; an explicit
  split became `FlexSplitV`.
- `conv1d_2d_to_nwc`: a 1-D `Conv` on a 2-D [channels, time] tensor (`Unsqueeze(0)` -> `Conv` ->
  `Squeeze(0)`, how a streaming model convolves its [time, channels] buffer) -> the same `Conv` on
  an explicit [1, time, channels] tensor with the channels-first transposes next to it, and the
  2-D transposes around it folded away. onnx2tf mis-tracks the layout of the 2-D form (the
  dscnn_ctc model failed to convert with a shape error in the following `Gemm`).
- `layernorm_to_primitives`: `LayerNormalization` -> ReduceMean, Sub, Mul, ReduceMean, Add, Sqrt,
  Div (then the scale and bias, unless they are 1 and 0). onnx2tf lowers the fused op through
  `tf.nn.moments` to SQUARED_DIFFERENCE, which has no int16 kernel: an int16x8 file failed at
  invoke ("SquaredDifference only supports FLOAT32 and INT32"); the primitives lower to
  MEAN/SUB/MUL/ADD/RSQRT, all with int8 and int16 kernels. An all-zero bias is dropped rather
  than added: a constant quantized to scale 0 aborts LiteRT's ADD/SUB preparation.

- `logsoftmax_to_primitives`: `LogSoftmax` -> `Log(Max(Softmax(x), 1e-30))`. LiteRT has no int16x8
  kernel for LOG_SOFTMAX ("Quantization to 16x8-bit not yet supported"); SOFTMAX, MAXIMUM and LOG
  have. (Without the floor, TensorFlow's converter fuses log(softmax) back into LOG_SOFTMAX.)

The rewritten graph is streamed against its input graph on onnxruntime, each with its own state,
before it is published; `legalize.json` records which rewrites fired on which nodes.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from pipeline.cache import Artifact
from pipeline.contract import read_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import InternalError
from pipeline.export.rewrite import publish_rewrite
from pipeline.onnx_graph import GraphEdit

if TYPE_CHECKING:
    import onnx

REPORT_FILE = "legalize.json"
RewriteName = Literal["split_to_slice", "conv1d_2d_to_nwc", "layernorm_to_primitives", "logsoftmax_to_primitives"]


class LegalizeConfig(StageConfig):
    rewrites: tuple[RewriteName, ...] = Field(
        ("split_to_slice", "conv1d_2d_to_nwc", "layernorm_to_primitives", "logsoftmax_to_primitives"),
        description="Rewrites to apply, in this order.",
    )
    check_chunks: int = Field(200, gt=0, description="Chunks streamed through both graphs to check the rewrites.")
    check_atol: float = Field(1e-5, ge=0, description="Largest output difference the rewrites may introduce.")


def split_to_slice(g: GraphEdit) -> list[str]:
    """Split -> Slice per output (explicit sizes from the input or attribute, or equal parts)."""
    fired = []
    for split in [n for n in g.graph.node if n.op_type == "Split"]:
        source, axis = split.input[0], int(g.attr(split, "axis", 0))
        if len(split.input) > 1 and split.input[1]:
            sizes = g.constant(split.input[1])
            if sizes is None:
                continue  # sizes computed at run time: no static slices to cut
        else:
            sizes = g.attr(split, "split")
        if sizes is None:
            shape = g.shapes.get(source)
            if shape is None or shape[axis] is None:
                continue  # equal split of an unknown extent: onnx2tf maps it to builtin SPLIT anyway
            parts = int(g.attr(split, "num_outputs", len(split.output)))
            step = -(-shape[axis] // parts)
            sizes = [min(step, shape[axis] - k * step) for k in range(parts)]
        start = 0
        for k, (output, size) in enumerate(zip(split.output, [int(s) for s in np.ravel(sizes)])):
            if output:
                base = f"{split.name or 'Split'}/slice{k}"
                g.node(
                    "Slice",
                    [source, g.int64(f"{base}/starts", [start]), g.int64(f"{base}/ends", [start + size]), g.int64(f"{base}/axes", [axis])],
                    [output],
                    base,
                )
            start += size
        g.remove([split])
        fired.append(split.name)
    return fired


def conv1d_2d_to_nwc(g: GraphEdit) -> list[str]:
    """Unsqueeze(0) -> Conv1d -> Squeeze(0) on a 2-D [C, L] tensor -> explicit NWC around the Conv."""
    fired = []
    for conv in [n for n in g.graph.node if n.op_type == "Conv"]:
        weight = g.shapes.get(conv.input[1]) or (None if (w := g.constant(conv.input[1])) is None else w.shape)
        unsqueeze = g.producer(conv.input[0])
        after = g.consumers(conv.output[0])
        if weight is None or len(weight) != 3 or unsqueeze is None or unsqueeze.op_type != "Unsqueeze":
            continue
        if len(after) != 1 or after[0].op_type != "Squeeze" or conv.output[0] in g.graph_outputs:
            continue
        squeeze = after[0]
        source = unsqueeze.input[0]
        if g.axes(unsqueeze) != [0] or g.axes(squeeze) != [0] or len(g.shapes.get(source, ())) != 2:
            continue
        if len(g.consumers(unsqueeze.output[0])) != 1:
            continue
        base = conv.name or "Conv"
        # input side: [C, L] -> [L, C] (reusing the tensor a Transpose made it from) -> [1, L, C] -> [1, C, L]
        transposed = g.producer(source)
        if transposed is not None and transposed.op_type == "Transpose" and list(g.attr(transposed, "perm", [])) == [1, 0]:
            channels_last = transposed.input[0]
        else:
            channels_last = g.fresh(f"{base}/nwc_in")
            g.node("Transpose", [source], [channels_last], f"{base}/to_time_major", perm=[1, 0])
        batched = g.fresh(f"{base}/nwc_batch")
        g.axes_node("Unsqueeze", channels_last, [0], batched, f"{base}/unsqueeze")
        ncw = g.fresh(f"{base}/ncw_in")
        g.node("Transpose", [batched], [ncw], f"{base}/to_ncw", perm=[0, 2, 1])
        conv.input[0] = ncw
        # output side: [1, C', T] -> [1, T, C'] -> [T, C'], then give each consumer what it expects
        nwc_out = g.fresh(f"{base}/nwc_out")
        g.node("Transpose", [conv.output[0]], [nwc_out], f"{base}/to_nwc", perm=[0, 2, 1])
        time_major = g.fresh(f"{base}/time_major")
        g.axes_node("Squeeze", nwc_out, [0], time_major, f"{base}/squeeze")
        result = squeeze.output[0]
        channel_major_users = []
        for user in g.consumers(result):
            if user.op_type == "Transpose" and list(g.attr(user, "perm", [])) == [1, 0] and user.output[0] not in g.graph_outputs:
                for follower in g.consumers(user.output[0]):
                    follower.input[:] = [time_major if i == user.output[0] else i for i in follower.input]
            elif user.op_type == "Gemm" and user.input[0] == result and user.input[1] != result:
                trans_a = [a for a in user.attribute if a.name == "transA"]
                if trans_a:
                    trans_a[0].i = 1 - trans_a[0].i
                else:
                    from onnx import helper

                    user.attribute.append(helper.make_attribute("transA", 1))
                user.input[0] = time_major
            else:
                channel_major_users.append(user)
        g.remove([unsqueeze, squeeze])
        if channel_major_users or result in g.graph_outputs:
            g.node("Transpose", [time_major], [result], f"{base}/to_channel_major", perm=[1, 0])
        fired.append(conv.name)
    return fired


def layernorm_to_primitives(g: GraphEdit) -> list[str]:
    """LayerNormalization -> mean, centre, variance, divide by sqrt(variance + epsilon), scale, shift."""
    fired = []
    for norm in [n for n in g.graph.node if n.op_type == "LayerNormalization"]:
        rank = len(g.shapes.get(norm.input[0], ()))
        if not rank or any(o for o in norm.output[1:]):  # unknown rank, or the mean / inverse std outputs are used
            continue
        axis = int(g.attr(norm, "axis", -1)) % rank
        axes, base = list(range(axis, rank)), norm.name or "LayerNormalization"
        scale = g.constant(norm.input[1])
        bias = g.constant(norm.input[2]) if len(norm.input) > 2 and norm.input[2] else None

        def mean(tensor: str, label: str) -> str:
            result = g.fresh(f"{base}/{label}")
            if g.opset >= 18:
                g.node("ReduceMean", [tensor, g.int64(f"{base}/{label}_axes", axes)], [result], f"{base}/{label}", keepdims=1)
            else:
                g.node("ReduceMean", [tensor], [result], f"{base}/{label}", axes=axes, keepdims=1)
            return result

        def binary(op: str, a: str, b: str, label: str, output: str | None = None) -> str:
            result = output or g.fresh(f"{base}/{label}")
            g.node(op, [a, b], [result], f"{base}/{label}")
            return result

        from onnx import numpy_helper

        epsilon = g.fresh(f"{base}/epsilon")
        g.graph.initializer.append(numpy_helper.from_array(np.array(g.attr(norm, "epsilon", 1e-5), dtype=np.float32), epsilon))
        centred = binary("Sub", norm.input[0], mean(norm.input[0], "mean"), "centre")
        variance = mean(binary("Mul", centred, centred, "square"), "variance")
        deviation = g.fresh(f"{base}/std")
        g.node("Sqrt", [binary("Add", variance, epsilon, "add_epsilon")], [deviation], f"{base}/sqrt")
        steps = [("Div", deviation, "normalize")]
        if scale is None or not np.all(scale == 1):
            steps.append(("Mul", norm.input[1], "scale"))
        has_bias = len(norm.input) > 2 and bool(norm.input[2])
        if has_bias and (bias is None or np.any(bias != 0)):  # a computed bias, or a constant one that is not all zero
            steps.append(("Add", norm.input[2], "shift"))
        current = centred
        for k, (op, operand, label) in enumerate(steps):
            current = binary(op, current, operand, label, norm.output[0] if k == len(steps) - 1 else None)
        g.remove([norm])
        fired.append(norm.name)
    return fired


def logsoftmax_to_primitives(g: GraphEdit) -> list[str]:
    """LogSoftmax -> Log(Max(Softmax(x), 1e-30)) over the same axis."""
    fired = []
    for node in [n for n in g.graph.node if n.op_type == "LogSoftmax"]:
        rank = len(g.shapes.get(node.input[0], ()))
        if not rank:
            continue
        axis = int(g.attr(node, "axis", -1)) % rank
        base, x = node.name or "LogSoftmax", node.input[0]

        def unary(op: str, tensor: str, label: str) -> str:
            result = g.fresh(f"{base}/{label}")
            g.node(op, [tensor], [result], f"{base}/{label}", **({"axis": axis} if op == "Softmax" else {}))
            return result

        # TensorFlow's converter fuses both x - log(sum(exp(x))) and log(softmax(x)) back into LOG_SOFTMAX; a floor
        # far below any float32 softmax value (which is >= exp(-88) or exactly 0) keeps the ops apart
        from onnx import numpy_helper

        floor = g.fresh(f"{base}/floor")
        g.graph.initializer.append(numpy_helper.from_array(np.array(1e-30, dtype=np.float32), floor))
        floored = g.fresh(f"{base}/floored")
        g.node("Max", [unary("Softmax", x, "softmax"), floor], [floored], f"{base}/floor")
        g.node("Log", [floored], [node.output[0]], f"{base}/log")
        g.remove([node])
        fired.append(node.name)
    return fired


REWRITES: dict[str, Callable[[GraphEdit], list[str]]] = {
    "split_to_slice": split_to_slice,
    "conv1d_2d_to_nwc": conv1d_2d_to_nwc,
    "layernorm_to_primitives": layernorm_to_primitives,
    "logsoftmax_to_primitives": logsoftmax_to_primitives,
}


def legalize(model: "onnx.ModelProto", rewrites: tuple[str, ...]) -> dict[str, list[str]]:
    """Apply `rewrites` in place; returns, per rewrite, the names of the nodes it replaced."""
    fired: dict[str, list[str]] = {}
    for name in rewrites:
        edit = GraphEdit(model)  # fresh shapes and lookups after the previous rewrite
        fired[name] = REWRITES[name](edit)
        edit.finish()
    return fired


def op_histogram(model: "onnx.ModelProto") -> dict[str, int]:
    return dict(sorted(Counter(n.op_type for n in model.graph.node).items()))


class LegalizeStage(Stage):
    name = "legalize"
    version = "2"
    tools = ("onnx", "onnxruntime")
    Config = LegalizeConfig

    @classmethod
    def run(cls, config: LegalizeConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        import onnx

        source = inputs["model"].path
        contract = read_contract(source)
        model = onnx.load(str(source / contract.artifact))
        before = op_histogram(model)
        fired = legalize(model, config.rewrites)
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise InternalError(f"legalize produced an invalid graph ({ctx.node_id}): {exc}") from None
        worst, bad = publish_rewrite(model, source, out, config.check_chunks, config.check_atol, "legalize", ctx.node_id)
        if bad:
            changed = {k: v for k, v in fired.items() if v}
            raise InternalError(
                f"legalize rewrites {changed} changed outputs beyond {config.check_atol:g} over {config.check_chunks} "
                f"streamed chunks: {bad} ({ctx.node_id})"
            )
        report = {
            "rewrites": {name: {"fired": len(nodes), "nodes": nodes} for name, nodes in fired.items()},
            "ops_before": before,
            "ops_after": op_histogram(model),
            "check": {"chunks": config.check_chunks, "max_abs": worst},
        }
        (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
        summary = ", ".join(f"{name} x{len(nodes)}" for name, nodes in fired.items() if nodes) or "nothing to rewrite"
        ctx.log(f"legalize: {summary}; worst difference {max(worst.values()):.2g}")
