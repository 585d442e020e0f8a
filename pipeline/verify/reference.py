"""reference: stream the verification speech through the PyTorch reference, once, and keep what verify compares with.

Every verify stage compares against these outputs, so the reference runs once per chunk length
however many backends and precisions a target has. Besides the non-state outputs of every call
(`outputs.npz`), it keeps the state going into and coming out of each call of the teacher-forced
windows (`teacher.npz`), spread over the start, middle and end of the stream: there every backend
is called on the reference's own state, so its one-call error, states included, is measured
where the states have grown, not only in the first seconds.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.audio.stream import StreamData
from pipeline.cache import Artifact
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import UserError
from pipeline.spec import StreamSpec
from pipeline.verify.records import OUTPUTS_FILE, STREAM_FILE, TEACHER_FILE, teacher_steps


def check_probabilities(spec: StreamSpec, outputs: dict[str, np.ndarray]) -> None:
    """A `probability` output of the reference must stay in [0, 1]: its threshold and its bounds assume it."""
    for k, o in enumerate(spec.outputs):
        if o.kind != "probability":
            continue
        low, high = float(outputs[o.name].min()), float(outputs[o.name].max())
        if not (0.0 <= low and high <= 1.0):  # NaN fails too
            raise UserError(
                f"output {o.name!r} is declared a probability (values in [0, 1]) but PyTorch streaming the "
                f"verification speech gives values from {low:.4g} to {high:.4g}",
                where=f"outputs[{k}].kind",
                hint="apply the sigmoid (or softmax) inside the model, or declare the output as kind 'tensor'",
            )


class ReferenceConfig(StageConfig):
    data: StreamData = Field(description="Verification speech.")
    teacher_windows: int = Field(3, ge=1, description="Teacher-forced windows, spread evenly from the start to the end of the stream.")
    teacher_steps: int = Field(200, ge=1, description="Consecutive calls per teacher-forced window.")


class ReferenceStage(Stage):
    name = "reference"
    version = "2"
    tools = ("torch", "numpy")
    Config = ReferenceConfig

    @classmethod
    def run(cls, config: ReferenceConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        from pipeline.audio.ctc import ctc_greedy
        from pipeline.audio.stream import speech_stream, truth_cer
        from pipeline.export.session import TorchSession
        from pipeline.verify.metrics import per_frame

        session = TorchSession(inputs["model"].path)
        spec = session.spec
        stream = speech_stream(config.data, spec)
        forced = teacher_steps(len(stream.chunks), config.teacher_windows, config.teacher_steps)
        wanted = set(forced.tolist())
        state_in: dict[str, list[np.ndarray]] = {s.input: [] for s in spec.states}
        state_out: dict[str, list[np.ndarray]] = {s.output: [] for s in spec.states}

        def keep_states(step: int, feeds: dict, results: dict) -> None:
            if step in wanted:
                for s in spec.states:
                    state_in[s.input].append(feeds[s.input])
                    state_out[s.output].append(results[s.output])

        outputs, _ = session.stream(stream.chunks, ctx.progress, f"{ctx.node_id}: torch", observe=keep_states)
        check_probabilities(spec, outputs)
        np.savez(out / OUTPUTS_FILE, **outputs)
        teacher = {"steps": forced} | {f"in.{k}": np.stack(v) for k, v in state_in.items()} | {f"out.{k}": np.stack(v) for k, v in state_out.items()}
        np.savez(out / TEACHER_FILE, **teacher)
        summary: dict = {
            "steps": len(stream.chunks),
            "audio_seconds": len(stream.chunks) * spec.chunk_samples / spec.frontend.sample_rate,
            "truth": stream.text,
            "teacher_forced_steps": len(forced),
        }
        for output in spec.outputs:
            if output.kind == "ctc_logits" and spec.decoder is not None and spec.decoder.kind == "ctc_greedy":
                frames = per_frame(outputs[output.name], output.time_axis)
                summary["transcript"] = ctc_greedy(frames, spec.decoder.vocabulary, spec.decoder.blank)
                truth = truth_cer(stream, frames, spec.decoder.vocabulary, spec.decoder.blank, spec.chunk_samples * len(stream.chunks) // len(frames))
                if truth is not None:  # None: no file has a transcript
                    summary["cer"] = truth
        (out / STREAM_FILE).write_text(json.dumps(summary, indent=1) + "\n")
