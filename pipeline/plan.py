"""plan(manifest) -> Graph: the stages a target needs, derived from its backends and precisions.

    trace -> onnx -> simplify -> (each backend's lowering) -> verify -> report
    trace -> reference -------------------------------------^
    trace -> calibrate -> (quantized lowerings)

One chain per chunk length; one verify per (backend, precision, chunk length). With
`verification.noisy` (the default) each chunk length also has a `reference-noisy@<chunk>` and each
variant a `verify-noisy:<variant>`, streaming the seeded noisy, reverberant copy of the same
speech: a condition of the variant, reported inside its record (report input `noisy:<variant>`),
not a variant of its own. Calibration streams the `fit` part of its split, clean and as
`augmented_copies` augmented copies; the `held_out` part is left for judging a quantization. Backends are
known only through the registry: each lowers itself onto the plan. Node ids and variant names end
in the chunk length in the unit the manifest lists it: `@20ms` (chunk_ms) or `@512smp`
(chunk_samples; see `pipeline.spec.ChunkLength`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from pipeline.audio.stream import stream_data
from pipeline.backends import get_backend
from pipeline.backends.base import Lowering
from pipeline.cache import sha256_file
from pipeline.dag import Graph, Node
from pipeline.errors import InternalError
from pipeline.export.simplify import SimplifyConfig, SimplifyStage
from pipeline.export.to_onnx import OnnxConfig, OnnxStage
from pipeline.export.trace import TraceConfig, TraceStage
from pipeline.manifest import Manifest
from pipeline.model import source_digest
from pipeline.spec import ChunkLength
from pipeline.report.stage import ReportConfig, ReportStage, VariantInfo, noisy_role, search_role
from pipeline.verify.calibrate import CalibrateConfig, CalibrateStage
from pipeline.verify.reference import ReferenceConfig, ReferenceStage
from pipeline.verify.stage import VerifyConfig, VerifyStage


@dataclass
class PlanContext:
    manifest: Manifest
    nodes: list[Node] = field(default_factory=list)
    searched: dict[str, str] = field(default_factory=dict)  # variant -> its quant-search node (verified against the goal)

    def add(self, node: Node) -> str:
        if node.id not in {n.id for n in self.nodes}:
            self.nodes.append(node)
        return node.id

    def calibration(self, chunk: ChunkLength, traced: str) -> str:
        """The node recording real (chunk, state) pairs from the reference, shared by every calibrated variant."""
        c = self.manifest.calibration
        if c is None:
            raise InternalError("a calibrated variant was planned for a manifest without a calibration section")
        data = stream_data(
            max_seconds=None, corpus=c.corpus, split=c.split, audio=c.audio, transcripts=c.transcripts, part="fit", held_out_every=c.held_out_every
        )
        config = CalibrateConfig(data=data, max_samples=c.max_samples, augmented_copies=c.augmented_copies)
        return self.add(Node(f"calibrate@{chunk.label}", CalibrateStage, config, (("model", traced),)))

    def held_out(self) -> tuple:
        """The calibration section's held-out utterances (never in the calibration ranges), clean and as the noisy,
        reverberant copy: what a recipe search streams its candidates over."""
        c, q = self.manifest.calibration, self.manifest.quantization
        return tuple(
            stream_data(
                max_seconds=q.held_out_seconds,
                corpus=c.corpus,
                split=c.split,
                audio=c.audio,
                transcripts=c.transcripts,
                part="held_out",
                held_out_every=c.held_out_every,
                condition=condition,
            )
            for condition in ("clean", "noisy")
        )

    def search(self, chunk: ChunkLength, traced: str, backend_name: str, precision: str, config, inputs: tuple, confirm: dict | None = None) -> str | None:
        """The recipe search of one quantized variant, unless the manifest pins its recipe or turns the search off."""
        from pipeline.quant.search import SearchConfig, SearchStage

        backend, q = get_backend(backend_name), self.manifest.quantization
        quantizer = backend.load_quantizer()
        if not q.search or quantizer is None or self.manifest.calibration is None:
            return None
        if quantizer.space(precision).empty or quantizer.pinned(config):
            return None
        name = variant_name(backend_name, precision, chunk)
        search = SearchConfig(
            backend=backend_name,
            precision=precision,
            variant=name,
            stage_config=config.model_dump(mode="json"),
            default_tolerance=backend.precision(precision).tolerance,
            goal=q.goal,
            tolerance_override=self.manifest.tolerance_override(backend_name, precision),
            data=self.held_out(),
            margin=q.margin,
            max_evaluations=q.max_evaluations,
            max_ops=q.max_ops,
            confirm_seconds=q.confirm_seconds,
            max_confirmations=q.max_confirmations,
            confirm=confirm or {},
        )
        self.searched[name] = self.add(Node(f"quant-search:{name}", SearchStage, search, (*inputs, ("torch", traced))))
        return self.searched[name]

    def onnx(self, suffix: str, traced: str) -> str:
        """The simplified ONNX graph, planned only for backends that lower from ONNX (Core ML converts the trace itself)."""
        exported = self.add(Node(f"onnx{suffix}", OnnxStage, OnnxConfig(), (("model", traced),)))
        return self.add(Node(f"simplify{suffix}", SimplifyStage, SimplifyConfig(), (("model", exported),)))


def variant_name(backend: str, precision: str, chunk: ChunkLength) -> str:
    return f"{backend}-{precision}@{chunk.label}"


def plan(manifest: Manifest) -> Graph:
    ctx = PlanContext(manifest)
    ref = manifest.model
    checkpoint_sha = sha256_file(ref.checkpoint)
    source_sha = source_digest(ref)
    v = manifest.verification
    data = stream_data(max_seconds=v.max_seconds, corpus=v.corpus, split=v.split, audio=v.audio, transcripts=v.transcripts)
    noisy_data = data.replaced(condition="noisy")
    report_inputs: list[tuple[str, str]] = []
    variants = []
    for chunk in manifest.chunks:
        suffix = f"@{chunk.label}"
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
                    chunk=chunk,
                    checkpoint=ref.checkpoint,
                    python_path=ref.python_path,
                ),
            )
        )
        reference = ctx.add(Node(f"reference{suffix}", ReferenceStage, ReferenceConfig(data=data, teacher_steps=v.teacher_steps), (("model", traced),)))
        if v.noisy:
            noisy_reference = ctx.add(
                Node(f"reference-noisy{suffix}", ReferenceStage, ReferenceConfig(data=noisy_data, teacher_steps=v.teacher_steps), (("model", traced),))
            )
        for backend_name, precisions in manifest.backends.items():
            backend = get_backend(backend_name)
            lowering = Lowering(
                chunk=chunk,
                traced=traced,
                onnx=lambda suffix=suffix, traced=traced: ctx.onnx(suffix, traced),
                options=manifest.backend_options(backend_name),
                add=ctx.add,
                calibration=lambda chunk=chunk, traced=traced: ctx.calibration(chunk, traced),
                search=lambda b, p, config, inputs, confirm=None, chunk=chunk, traced=traced: ctx.search(chunk, traced, b, p, config, inputs, confirm),
            )
            for precision in precisions:
                artifact = backend.lower(lowering, precision)
                name = variant_name(backend_name, precision, chunk)
                override = manifest.tolerance_override(backend_name, precision)
                if name in ctx.searched and manifest.quantization.goal is not None:  # held to the goal it was searched for
                    override = manifest.quantization.goal.merged(override)
                config = VerifyConfig(
                    variant=name,
                    backend=backend_name,
                    precision=precision,
                    model_precision=backend.precision(precision).numerics,
                    default_tolerance=backend.precision(precision).tolerance,
                    tolerance_override=override,
                    data=data,
                )
                inputs = (("model", artifact), ("reference", reference), ("torch", traced))
                report_inputs.append((name, ctx.add(Node(f"verify:{name}", VerifyStage, config, inputs))))
                if v.noisy:
                    noisy = config.model_copy(update={"data": noisy_data})
                    inputs = (("model", artifact), ("reference", noisy_reference), ("torch", traced))
                    report_inputs.append((noisy_role(name), ctx.add(Node(f"verify-noisy:{name}", VerifyStage, noisy, inputs))))
                if name in ctx.searched:  # the recipe's latency cost, timed by its search
                    report_inputs.append((search_role(name), ctx.searched[name]))
                variants.append(
                    VariantInfo(
                        name=name,
                        backend=backend_name,
                        precision=precision,
                        chunk=chunk,
                        runtime=backend.runtime_label or backend_name,
                        device_latency=backend.device_latency,
                    )
                )
    report = ReportConfig(
        target=manifest.name,
        model=ref.factory,
        description=manifest.description,
        budgets=manifest.budgets,
        variants=tuple(variants),
        noisy=v.noisy,
    )
    ctx.add(Node("report", ReportStage, report, tuple(report_inputs), gather=True))
    return Graph(ctx.nodes)
