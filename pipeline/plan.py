"""plan(manifest) -> Graph: the stages a target needs, derived from its backends and precisions.

    trace -> onnx -> simplify -> (backend lowering) -> verify -> report
    trace -> reference ---------------------------------^

One chain per chunk length; one verify per (backend, precision, chunk length).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pipeline.audio.stream import split_digest
from pipeline.cache import sha256_file
from pipeline.dag import Graph, Node
from pipeline.errors import InternalError
from pipeline.manifest import Manifest
from pipeline.model import source_digest
from pipeline.stages.calibrate import CalibrateConfig, CalibrateStage
from pipeline.stages.legalize import LegalizeConfig, LegalizeStage
from pipeline.stages.onnx_export import OnnxConfig, OnnxStage
from pipeline.stages.reference import ReferenceConfig, ReferenceStage, StreamData
from pipeline.stages.report import ReportConfig, ReportStage
from pipeline.stages.simplify import SimplifyConfig, SimplifyStage
from pipeline.stages.tflite import QUANTIZED, TfliteConfig, TfliteStage
from pipeline.stages.trace import TraceConfig, TraceStage
from pipeline.stages.verify import VerifyConfig, VerifyStage


@dataclass
class PlanContext:
    manifest: Manifest
    nodes: list[Node] = field(default_factory=list)

    def add(self, node: Node) -> str:
        if node.id not in {n.id for n in self.nodes}:
            self.nodes.append(node)
        return node.id

    def calibration(self, chunk_ms: int, traced: str) -> str:
        """The node recording real (chunk, state) pairs from the reference, shared by every quantized variant."""
        c = self.manifest.calibration
        if c is None:
            raise InternalError("a quantized variant was planned for a manifest without a calibration section")
        data = StreamData(split=c.split, split_sha256=split_digest(c.corpus, c.split), max_seconds=None, corpus=c.corpus)
        config = CalibrateConfig(data=data, max_samples=c.max_samples)
        return self.add(Node(f"calibrate@{chunk_ms}ms", CalibrateStage, config, (("model", traced),)))


def variant_name(backend: str, precision: str, chunk_ms: int) -> str:
    return f"{backend}-{precision}@{chunk_ms}ms"


def _onnxruntime_artifact(ctx: PlanContext, chunk_ms: int, precision: str, simplified: str, traced: str) -> str:
    return simplified


def _litert_artifact(ctx: PlanContext, chunk_ms: int, precision: str, simplified: str, traced: str) -> str:
    legalized = ctx.add(Node(f"legalize@{chunk_ms}ms", LegalizeStage, LegalizeConfig(), (("model", simplified),)))
    inputs: tuple[tuple[str, str], ...] = (("model", legalized),)
    if precision in QUANTIZED:
        inputs += (("calibration", ctx.calibration(chunk_ms, traced)),)
    options = ctx.manifest.litert
    config = TfliteConfig(
        precision=precision,  # type: ignore[arg-type]
        allow_flex=options.allow_flex_ops,
        keep_float=options.keep_float.get(precision, ()),  # type: ignore[call-overload]
        keep_float_states=options.keep_float_states.get(precision, ()),  # type: ignore[call-overload]
    )
    return ctx.add(Node(f"tflite-{precision}@{chunk_ms}ms", TfliteStage, config, inputs))


# backend -> function adding the nodes that lower the simplified ONNX graph; returns the artifact node id
LOWERINGS: dict[str, Callable[[PlanContext, int, str, str, str], str]] = {
    "onnxruntime": _onnxruntime_artifact,
    "litert": _litert_artifact,
}


def plan(manifest: Manifest) -> Graph:
    ctx = PlanContext(manifest)
    ref = manifest.model
    checkpoint_sha = sha256_file(ref.checkpoint)
    source_sha = source_digest(ref)
    v = manifest.verification
    data = StreamData(split=v.split, split_sha256=split_digest(v.corpus, v.split), max_seconds=v.max_seconds, corpus=v.corpus)
    verify_nodes = []
    for chunk_ms in manifest.chunk_ms:
        suffix = f"@{chunk_ms}ms"
        traced = ctx.add(
            Node(
                f"trace{suffix}",
                TraceStage,
                TraceConfig(
                    target=manifest.name,
                    factory=ref.factory,
                    kwargs=ref.kwargs,
                    checkpoint_sha256=checkpoint_sha,
                    source_sha256=source_sha,
                    io=manifest.io,
                    chunk_ms=chunk_ms,
                    checkpoint=ref.checkpoint,
                    python_path=ref.python_path,
                ),
            )
        )
        exported = ctx.add(Node(f"onnx{suffix}", OnnxStage, OnnxConfig(), (("model", traced),)))
        simplified = ctx.add(Node(f"simplify{suffix}", SimplifyStage, SimplifyConfig(), (("model", exported),)))
        reference = ctx.add(Node(f"reference{suffix}", ReferenceStage, ReferenceConfig(data=data), (("model", traced),)))
        for backend, precisions in manifest.backends.items():
            for precision in precisions:
                artifact = LOWERINGS[backend](ctx, chunk_ms, precision, simplified, traced)
                name = variant_name(backend, precision, chunk_ms)
                verify_nodes.append(
                    ctx.add(
                        Node(
                            f"verify:{name}",
                            VerifyStage,
                            VerifyConfig(
                                variant=name,
                                backend=backend,
                                precision=precision,
                                chunk_ms=chunk_ms,
                                tolerance=manifest.tolerance(precision),
                                budgets=manifest.budgets,
                                data=data,
                            ),
                            (("model", artifact), ("reference", reference), ("torch", traced)),
                        )
                    )
                )
    ctx.add(
        Node(
            "report",
            ReportStage,
            ReportConfig(target=manifest.name, model=ref.factory, description=manifest.description),
            tuple((node_id.removeprefix("verify:"), node_id) for node_id in verify_nodes),
        )
    )
    return Graph(ctx.nodes)
