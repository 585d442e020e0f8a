"""qnn-legalize: ONNX -> ONNX rewrites of ops HTP has no kernel for into ops it has, each exact and checked.

The QNN EP 2.7.0 (QNN SDK 2.51) refuses these element-wise ops on HTP (measured: "Operators of
type `X` are not supported by QNN EP"), while it takes the ops each is rewritten into:

- `Softsign(x)` -> `x / (1 + |x|)`;
- `Sinh(x)` -> `(exp(x) - exp(-x)) / 2`, `Cosh(x)` -> `(exp(x) + exp(-x)) / 2`;
- `Acos(x)` -> `pi / 2 - Asin(x)`.

Every rewrite runs on the float graph before quantization, so the quantizer calibrates the new
tensors on real speech like any other. The rewritten graph is streamed against its input on
onnxruntime, each with its own state, before it is published; `legalize.json` records which
rewrites fired on which nodes. Ops refused with no exact rewrite (Erf, say) fail the qnn-htp
stage, named with a suggestion (ops.py).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.cache import Artifact
from pipeline.contract import read_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import InternalError
from pipeline.export.rewrite import publish_rewrite
from pipeline.onnx_graph import GraphEdit

REPORT_FILE = "legalize.json"


class QnnLegalizeConfig(StageConfig):
    check_chunks: int = Field(100, gt=0, description="Chunks streamed through both graphs to check the rewrites.")
    check_atol: float = Field(1e-5, ge=0, description="Largest output difference the rewrites may introduce.")


def _scalar(g: GraphEdit, base: str, value: float) -> str:
    from onnx import numpy_helper

    name = g.fresh(base)
    g.graph.initializer.append(numpy_helper.from_array(np.array(value, dtype=np.float32), name))
    return name


def _replace(g: GraphEdit, op: str, build: Callable[[GraphEdit, str, str, str], None]) -> list[str]:
    fired = []
    for node in [n for n in g.graph.node if n.op_type == op]:
        build(g, node.input[0], node.output[0], node.name or op)
        g.remove([node])
        fired.append(node.name)
    return fired


def _softsign(g: GraphEdit, x: str, y: str, name: str) -> None:
    magnitude, denominator = g.fresh(f"{name}/abs"), g.fresh(f"{name}/one_plus_abs")
    g.node("Abs", [x], [magnitude], f"{name}/Abs")
    g.node("Add", [magnitude, _scalar(g, f"{name}/one", 1.0)], [denominator], f"{name}/Add")
    g.node("Div", [x, denominator], [y], f"{name}/Div")


def _hyperbolic(sign: str) -> Callable[[GraphEdit, str, str, str], None]:
    def build(g: GraphEdit, x: str, y: str, name: str) -> None:
        negated, up, down, combined = (g.fresh(f"{name}/{t}") for t in ("neg", "exp", "exp_neg", "combined"))
        g.node("Exp", [x], [up], f"{name}/Exp")
        g.node("Neg", [x], [negated], f"{name}/Neg")
        g.node("Exp", [negated], [down], f"{name}/ExpNeg")
        g.node(sign, [up, down], [combined], f"{name}/{sign}")
        g.node("Mul", [combined, _scalar(g, f"{name}/half", 0.5)], [y], f"{name}/Half")

    return build


def _acos(g: GraphEdit, x: str, y: str, name: str) -> None:
    arcsine = g.fresh(f"{name}/asin")
    g.node("Asin", [x], [arcsine], f"{name}/Asin")
    g.node("Sub", [_scalar(g, f"{name}/half_pi", float(np.pi / 2)), arcsine], [y], f"{name}/Sub")


REWRITES: dict[str, Callable[[GraphEdit, str, str, str], None]] = {
    "Softsign": _softsign,
    "Sinh": _hyperbolic("Sub"),
    "Cosh": _hyperbolic("Add"),
    "Acos": _acos,
}


def legalize(model) -> dict[str, list[str]]:
    """Apply every rewrite in place; returns, per op type, the names of the nodes replaced."""
    fired = {}
    for op, build in REWRITES.items():
        edit = GraphEdit(model)
        fired[op] = _replace(edit, op, build)
        edit.finish()
    return fired


class QnnLegalizeStage(Stage):
    name = "qnn-legalize"
    version = "1"
    tools = ("onnx", "onnxruntime")
    Config = QnnLegalizeConfig

    @classmethod
    def run(cls, config: QnnLegalizeConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        import onnx

        source = inputs["model"].path
        contract = read_contract(source)
        model = onnx.load(str(source / contract.artifact))
        before = dict(sorted(Counter(n.op_type for n in model.graph.node).items()))
        fired = legalize(model)
        try:
            onnx.checker.check_model(model, full_check=True)
        except onnx.checker.ValidationError as exc:
            raise InternalError(f"qnn-legalize produced an invalid graph ({ctx.node_id}): {exc}") from None
        worst, bad = publish_rewrite(model, source, out, config.check_chunks, config.check_atol, "qnn-legalize", ctx.node_id)
        if bad:
            raise InternalError(f"qnn-legalize rewrites {fired} changed outputs beyond {config.check_atol:g}: {bad} ({ctx.node_id})")
        report = {
            "rewrites": {op: {"fired": len(nodes), "nodes": nodes} for op, nodes in fired.items()},
            "ops_before": before,
            "ops_after": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
            "check": {"chunks": config.check_chunks, "max_abs": worst},
        }
        (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
        summary = ", ".join(f"{op} x{len(nodes)}" for op, nodes in fired.items() if nodes) or "nothing to rewrite"
        ctx.log(f"qnn-legalize: {summary}; worst difference {max(worst.values()):.2g}")
