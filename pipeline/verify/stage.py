"""verify: stream the verification speech through one artifact on its own runtime, carrying its
own state from chunk to chunk, and hold it to the PyTorch reference.

Per non-state output: max abs error, relative to its range, SQNR, RMS, cosine and the error per
window of audio (drift). Per output and state: the error of one call started from the
reference's state, in windows at the start, middle and end of the stream. For CTC outputs the
greedy transcript's CER against the truth and against the reference's; for decision_logits and
probability outputs the agreement of their per-frame decisions (arg-max; p >= threshold; the
positive/negative decision where positive classes are declared), per output and, for the
variant, that of the output agreeing least. Wall-clock figures go to `timings.json`, outside the
artifact's digest: the report judges speed budgets, so a cached verify never freezes another
machine's timing.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.audio.stream import StreamData
from pipeline.cache import Artifact, artifact_bytes
from pipeline.contract import read_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.verify.figures import closed_loop_figures
from pipeline.verify.gates import Tolerance, judge, model_tolerance
from pipeline.verify.records import OUTPUTS_FILE, STREAM_FILE, load_teacher

RESULT_FILE = "variant.json"
TIMINGS_FILE = "timings.json"


class VerifyConfig(StageConfig):
    variant: str = Field(description="Variant name, e.g. 'litert-int8@20ms'.")
    backend: str = Field(description="Registered backend whose runtime executes the artifact.")
    precision: str = Field(description="Artifact precision, in the backend's vocabulary.")
    model_precision: str = Field(
        "", description="The precision whose model-declared bounds apply (same arithmetic, e.g. Core ML stateful -> fp16); '' = precision."
    )
    default_tolerance: Tolerance = Field(description="The backend's default bounds for this precision.")
    tolerance_override: Tolerance | None = Field(None, description="The manifest's bounds, applied over the model's own defaults.")
    data: StreamData = Field(description="Verification speech (must be what the reference streamed).")
    window_seconds: float = Field(10.0, gt=0, description="Audio per drift window.")
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


def teacher_forced(session, chunks: list[dict[str, np.ndarray]], reference: dict[str, np.ndarray], teacher_dir: Path) -> dict[str, dict]:
    """Per output (states included): max abs error, largest |reference| and SQNR over calls fed the reference's state."""
    from pipeline.verify.metrics import as_probabilities, log_probability_outputs, sqnr_db

    steps, state_in, state_out = load_teacher(teacher_dir)
    spec = session.spec
    logp = log_probability_outputs(spec, reference)  # compared as posteriors, as in the closed loop
    expected_of = {o.name: (lambda k, i, name=o.name: reference[name][k]) for o in spec.outputs}
    expected_of |= {s.output: (lambda k, i, name=s.output: state_out[name][i]) for s in spec.states}
    errors: dict[str, list[np.ndarray]] = {name: [] for name in expected_of}
    expected_values: dict[str, list[np.ndarray]] = {name: [] for name in expected_of}
    for i, k in enumerate(steps.tolist()):
        got = session.call({**chunks[k], **{s.input: state_in[s.input][i] for s in spec.states}})
        for name, expected in expected_of.items():
            value, candidate = (as_probabilities(expected(k, i)), as_probabilities(got[name])) if name in logp else (expected(k, i), got[name])
            errors[name].append((candidate - value).ravel())
            expected_values[name].append(np.ravel(value))
    result = {}
    for name in expected_of:
        error, value = np.concatenate(errors[name]), np.concatenate(expected_values[name])
        result[name] = {"max_abs": float(np.abs(error).max()), "reference_max_abs": float(np.abs(value).max()), "sqnr_db": sqnr_db(value, error)}
    return result


class VerifyStage(Stage):
    name = "verify"
    # 9: log-probability CTC outputs compare as posteriors (metrics.COMPARED_AS_PROBABILITIES); 10: the range bound
    # allows glitches on one call in a thousand (gates.QUANTIZED_GLITCHES), each output records its worst calls
    version = "10"
    tools = ("numpy",)
    Config = VerifyConfig

    @classmethod
    def key_tools(cls, config: VerifyConfig) -> tuple[str, ...]:
        from pipeline.backends import get_backend

        return cls.tools + get_backend(config.backend).tools

    @classmethod
    def run(cls, config: VerifyConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        from pipeline.audio.stream import speech_stream
        from pipeline.backends import get_backend

        artifact_dir, reference_dir = inputs["model"].path, inputs["reference"].path
        contract = read_contract(artifact_dir)
        spec = contract.stream
        reference = dict(np.load(reference_dir / OUTPUTS_FILE))
        summary = json.loads((reference_dir / STREAM_FILE).read_text())
        stream = speech_stream(config.data, spec)

        backend = get_backend(config.backend)
        session = backend.open_session(artifact_dir, threads=config.threads)
        outputs, seconds = session.stream(stream.chunks, ctx.progress, f"{ctx.node_id}: {config.backend}")
        backend_figures = backend.extra_figures(artifact_dir, stream.chunks, outputs)
        steps = len(stream.chunks)
        rate = spec.frontend.sample_rate
        window = max(1, int(round(config.window_seconds * rate / spec.chunk_samples)))
        metrics, extra, record = closed_loop_figures(spec, stream, reference, outputs, summary.get("transcript"), window)
        one_step = teacher_forced(session, stream.chunks, reference, reference_dir)
        for o in spec.outputs:
            metrics[o.name]["one_step_max_abs"] = one_step[o.name]["max_abs"]
            metrics[o.name]["one_step_reference_max_abs"] = one_step[o.name]["reference_max_abs"]
        states = {s.output: one_step[s.output] for s in spec.states}

        tolerance = config.default_tolerance.merged(model_tolerance(inputs["torch"].path, config.model_precision or config.precision)).merged(config.tolerance_override)
        failures = judge(metrics, states, tolerance, extra)
        record.update(
            {
                "name": config.variant,
                "backend": config.backend,
                "precision": config.precision,
                "chunk_samples": spec.chunk_samples,
                "chunk_ms": spec.chunk_ms,
                "sample_rate": rate,
                "artifact_file": contract.artifact,
                "size_bytes": artifact_bytes(artifact_dir / contract.artifact),
                "steps": steps,
                "audio_seconds": steps * spec.chunk_samples / rate,
                "passed": not failures,
                "outputs": {name: {k: v for k, v in m.items() if k not in ("drift", "call_max_abs")} for name, m in metrics.items()},
                "states": states,
                "ops": op_histogram(artifact_dir, contract.artifact),
                "teacher_forced_steps": summary["teacher_forced_steps"],
                "drift": {name: m["drift"] for name, m in metrics.items()},
                "window_seconds": config.window_seconds,
                "export": contract.export.model_dump() if contract.export is not None else None,
                "tolerance": tolerance.model_dump(exclude_none=True),
                "waived": tolerance.waived,
                "failures": failures,
                **extra,
            }
        )
        if "cer" in summary:
            record["reference_cer"] = summary["cer"]
        if backend_figures is not None:
            record["backend_figures"] = backend_figures
        if contract.quantization is not None:
            record["quantization"] = contract.quantization
        (out / RESULT_FILE).write_text(json.dumps(record, indent=1) + "\n")
        timings = {
            "rtf": float(seconds.sum() / record["audio_seconds"]),
            "latency_ms_p50": float(np.percentile(seconds, 50) * 1000),
            "latency_ms_p99": float(np.percentile(seconds, 99) * 1000),
            "threads": config.threads,
        }
        (out / TIMINGS_FILE).write_text(json.dumps(timings, indent=1) + "\n")
