"""verify: stream the verification speech through one artifact on its own runtime, carrying its
own state from chunk to chunk, and hold it to the PyTorch reference.

Per output: max abs, RMS and cosine error, and the error per window of audio (drift). For CTC
outputs the greedy transcript's CER against the truth and against the reference's transcript;
for decision outputs the per-frame agreement. Then size, real-time factor and latency.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.cache import Artifact
from pipeline.contract import read_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.manifest import Budgets, Tolerance
from pipeline.stages.reference import OUTPUTS_FILE, STREAM_FILE, StreamData, stream_outputs

RESULT_FILE = "variant.json"


class VerifyConfig(StageConfig):
    variant: str = Field(description="Variant name, e.g. 'litert-int8@20ms'.")
    backend: str = Field(description="Runtime that executes the artifact.")
    precision: str = Field(description="Artifact precision.")
    chunk_ms: int = Field(description="Chunk length of the artifact.")
    tolerance: Tolerance = Field(description="Limits the artifact must meet.")
    budgets: Budgets = Field(description="Size and speed limits.")
    data: StreamData = Field(description="Verification speech (must be what the reference streamed).")
    window_seconds: float = Field(10.0, gt=0, description="Audio per drift window.")
    teacher_forced_steps: int = Field(
        1000, ge=0, description="Leading chunks also run with the reference's state fed in: one-step error, no accumulation."
    )
    threads: int = Field(1, ge=1, description="Runtime threads while timing.")


def op_histogram(artifact_dir: Path, artifact: str) -> dict[str, int]:
    """Op type -> count: the lowering stage's ops.json where it wrote one, else the ONNX graph's nodes."""
    listing = artifact_dir / "ops.json"
    if listing.is_file():
        return json.loads(listing.read_text())["histogram"]
    if artifact.endswith(".onnx"):
        import onnx

        graph = onnx.load(str(artifact_dir / artifact), load_external_data=False).graph
        return dict(sorted(Counter(node.op_type for node in graph.node).items()))
    return {}


def teacher_forced(session, reference_session, chunks: list[dict[str, np.ndarray]]) -> dict[str, float]:
    """Max abs error per output (states included) when every call starts from the reference's state."""
    stream = session.stream
    reference_session.reset()
    worst = {name: 0.0 for name in stream.output_names}
    for chunk in chunks:
        feeds, expected = reference_session.advance(chunk)
        got = session.call(feeds)
        for name in worst:
            worst[name] = max(worst[name], float(np.abs(expected[name] - got[name]).max()))
    return worst


def judge(outputs: dict[str, dict], tolerance: Tolerance, extra: dict[str, float]) -> list[str]:
    failures = []
    for name, m in outputs.items():
        if tolerance.max_abs is not None and not m["max_abs"] <= tolerance.max_abs:
            failures.append(f"{name}: max abs error {m['max_abs']:.3g} exceeds {tolerance.max_abs:g}")
        if tolerance.max_rel is not None and not m["max_abs"] <= tolerance.max_rel * m["reference_max_abs"]:
            failures.append(
                f"{name}: max abs error {m['max_abs']:.3g} exceeds {tolerance.max_rel:g} of its range "
                f"({tolerance.max_rel * m['reference_max_abs']:.3g})"
            )
        if tolerance.one_step_max_abs is not None and not m["one_step_max_abs"] <= tolerance.one_step_max_abs:
            failures.append(
                f"{name}: teacher-forced (one call) max abs error {m['one_step_max_abs']:.3g} exceeds {tolerance.one_step_max_abs:g}"
            )
        if tolerance.rms is not None and not m["rms"] <= tolerance.rms:
            failures.append(f"{name}: RMS error {m['rms']:.3g} exceeds {tolerance.rms:g}")
        if tolerance.min_cosine is not None and not m["cosine"] >= tolerance.min_cosine:
            failures.append(f"{name}: cosine similarity {m['cosine']:.6f} below {tolerance.min_cosine:g}")
    if "cer_vs_reference" in extra and tolerance.max_cer_vs_reference is not None:
        if not extra["cer_vs_reference"] <= tolerance.max_cer_vs_reference:
            failures.append(
                f"transcript: CER against the PyTorch transcript {extra['cer_vs_reference']:.4f} "
                f"exceeds {tolerance.max_cer_vs_reference:g}"
            )
    if "decision_agreement" in extra and tolerance.min_decision_agreement is not None:
        if not extra["decision_agreement"] >= tolerance.min_decision_agreement:
            failures.append(
                f"decisions: agreement with PyTorch {extra['decision_agreement']:.4f} below {tolerance.min_decision_agreement:g}"
            )
    return failures


class VerifyStage(Stage):
    name = "verify"
    version = "2"
    tools = ("numpy", "torch", "onnxruntime", "ai-edge-litert", "onnx")
    Config = VerifyConfig

    @classmethod
    def run(cls, config: VerifyConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        from pipeline.audio.ctc import cer, ctc_greedy
        from pipeline.audio.stream import frame_labels, speech_stream
        from pipeline.report.metrics import compare, per_frame
        from pipeline.runtimes import open_session

        artifact_dir, reference_dir = inputs["model"].path, inputs["reference"].path
        contract = read_contract(artifact_dir)
        spec = contract.stream
        reference = dict(np.load(reference_dir / OUTPUTS_FILE))
        summary = json.loads((reference_dir / STREAM_FILE).read_text())
        data = config.data
        stream = speech_stream(data.corpus, data.split, spec, data.max_seconds)

        session = open_session(config.backend, artifact_dir, threads=config.threads)
        outputs, seconds = stream_outputs(session, stream.chunks, ctx.progress, f"{ctx.node_id}: {config.backend}")
        steps = len(stream.chunks)
        audio_seconds = steps * spec.chunk_ms / 1000
        window = max(1, int(round(config.window_seconds * 1000 / spec.chunk_ms)))

        metrics = {o.name: compare(reference[o.name], outputs[o.name], steps, window) for o in spec.outputs}
        one_step = teacher_forced(session, open_session("torch", inputs["torch"].path), stream.chunks[: config.teacher_forced_steps])
        for name, m in metrics.items():
            m["one_step_max_abs"] = one_step[name]
        extra: dict[str, float] = {}
        record: dict = {}
        for o in spec.outputs:
            frames = per_frame(outputs[o.name], o.time_axis)
            if o.kind == "ctc_logits" and spec.decoder is not None and spec.decoder.kind == "ctc_greedy":
                transcript = ctc_greedy(frames, spec.decoder.vocabulary, spec.decoder.blank)
                extra["cer"] = cer(stream.text, transcript)
                extra["cer_vs_reference"] = cer(summary["transcript"], transcript)
                record["transcript"] = transcript
            elif o.kind == "decision_logits":
                decisions = frames.argmax(axis=-1)
                ref_decisions = per_frame(reference[o.name], o.time_axis).argmax(axis=-1)
                extra["decision_agreement"] = float((decisions == ref_decisions).mean())
                labels = frame_labels(stream.speech, len(decisions), spec.chunk_samples * steps // len(decisions))
                extra["decision_accuracy"] = float((decisions == labels.astype(int)).mean())
                extra["reference_decision_accuracy"] = float((ref_decisions == labels.astype(int)).mean())

        size = (artifact_dir / contract.artifact).stat().st_size
        rtf = float(seconds.sum() / audio_seconds)
        failures = judge(metrics, config.tolerance, extra)
        if size > config.budgets.max_size_mb * 1e6:
            failures.append(f"size: {size / 1e6:.2f} MB exceeds the budget of {config.budgets.max_size_mb:g} MB")
        if rtf > config.budgets.max_rtf:
            failures.append(f"speed: real-time factor {rtf:.3f} exceeds the budget of {config.budgets.max_rtf:g}")
        record.update(
            {
                "name": config.variant,
                "backend": config.backend,
                "precision": config.precision,
                "chunk_ms": config.chunk_ms,
                "artifact_file": contract.artifact,
                "size_bytes": size,
                "steps": steps,
                "audio_seconds": audio_seconds,
                "passed": not failures,
                "outputs": {
                    name: {k: m[k] for k in ("max_abs", "rms", "cosine", "drift_ratio", "one_step_max_abs", "reference_max_abs")}
                    for name, m in metrics.items()
                },
                "ops": op_histogram(artifact_dir, contract.artifact),
                "states_one_step_max_abs": {s.output: one_step[s.output] for s in spec.states},
                "teacher_forced_steps": min(config.teacher_forced_steps, steps),
                "drift": {name: m["drift"] for name, m in metrics.items()},
                "window_seconds": config.window_seconds,
                "rtf": rtf,
                "latency_ms_p50": float(np.percentile(seconds, 50) * 1000),
                "latency_ms_p99": float(np.percentile(seconds, 99) * 1000),
                "failures": failures,
                **extra,
            }
        )
        if "cer" in summary:
            record["reference_cer"] = summary["cer"]
        (out / RESULT_FILE).write_text(json.dumps(record, indent=1) + "\n")
