"""reference: stream the verification speech through the PyTorch reference, once, and keep its outputs.

Every verify stage compares against these outputs, so the reference runs once per chunk length
however many backends and precisions a target has.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.cache import Artifact
from pipeline.dag import Stage, StageConfig, StageContext

OUTPUTS_FILE = "outputs.npz"
STREAM_FILE = "stream.json"


class StreamData(StageConfig):
    """The speech streamed, identified by content; the path is only where to read it."""

    split: str = Field(description="Corpus split streamed back to back.")
    split_sha256: str = Field(description="Digest of the split's index and audio files.")
    max_seconds: float | None = Field(description="Audio streamed, None for the whole split.")
    corpus: Path = Field(exclude=True, description="Corpus directory (not part of the key).")


class ReferenceConfig(StageConfig):
    data: StreamData = Field(description="Verification speech.")


def stream_outputs(
    session, chunks: list[dict[str, np.ndarray]], progress, label: str, observe: Callable[[int, dict, dict], None] | None = None
) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Closed-loop streaming: returns outputs stacked per chunk ([steps, ...]) and per-chunk seconds.

    `observe(step, feeds, results)` sees every call's inputs (chunk and state) and all its outputs, states included.
    """
    session.reset()
    collected: dict[str, list[np.ndarray]] = {o.name: [] for o in session.stream.outputs}
    seconds = np.zeros(len(chunks))
    clock = time.perf_counter
    for k, chunk in enumerate(progress(chunks, label, len(chunks))):
        started = clock()
        feeds, results = session.advance(chunk)
        seconds[k] = clock() - started
        for name in collected:
            collected[name].append(results[name])
        if observe is not None:
            observe(k, feeds, results)
    return {name: np.stack(values) for name, values in collected.items()}, seconds


class ReferenceStage(Stage):
    name = "reference"
    version = "1"
    tools = ("torch", "numpy")
    Config = ReferenceConfig

    @classmethod
    def run(cls, config: ReferenceConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        from pipeline.audio.ctc import cer, ctc_greedy
        from pipeline.audio.stream import speech_stream
        from pipeline.report.metrics import per_frame
        from pipeline.runtimes import open_session

        session = open_session("torch", inputs["model"].path)
        spec = session.stream
        data = config.data
        stream = speech_stream(data.corpus, data.split, spec, data.max_seconds)
        outputs, seconds = stream_outputs(session, stream.chunks, ctx.progress, f"{ctx.node_id}: torch")
        np.savez(out / OUTPUTS_FILE, **outputs)
        summary: dict = {
            "steps": len(stream.chunks),
            "audio_seconds": len(stream.chunks) * spec.chunk_ms / 1000,
            "truth": stream.text,
            "rtf": float(seconds.sum() / (len(stream.chunks) * spec.chunk_ms / 1000)),
        }
        for output in spec.outputs:
            if output.kind == "ctc_logits" and spec.decoder is not None and spec.decoder.kind == "ctc_greedy":
                transcript = ctc_greedy(per_frame(outputs[output.name], output.time_axis), spec.decoder.vocabulary, spec.decoder.blank)
                summary["transcript"] = transcript
                summary["cer"] = cer(stream.text, transcript)
        (out / STREAM_FILE).write_text(json.dumps(summary, indent=1) + "\n")
