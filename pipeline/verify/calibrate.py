"""calibrate: record (chunk, state) pairs while the PyTorch reference streams real calibration speech.

INT8 calibration must see the states the model really reaches after minutes of speech, never
zeros or random state: a recurrent cell state's range only shows up in a closed loop.
`calibration.npz` holds, per graph input, [samples, *shape] arrays taken at evenly spaced steps;
`ranges.json` holds the min/max of every input and output over the whole stream.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.cache import Artifact
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.verify.records import RANGES_FILE, SAMPLES_FILE
from pipeline.audio.stream import StreamData



class CalibrateConfig(StageConfig):
    data: StreamData = Field(description="Calibration speech.")
    max_samples: int = Field(2000, gt=0, description="(chunk, state) samples kept, evenly spaced over the stream.")


class CalibrateStage(Stage):
    name = "calibrate"
    version = "1"
    tools = ("torch", "numpy")
    Config = CalibrateConfig

    @classmethod
    def run(cls, config: CalibrateConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        from pipeline.audio.stream import speech_stream
        from pipeline.export.session import TorchSession

        session = TorchSession(inputs["model"].path)
        spec = session.spec
        stream = speech_stream(config.data, spec)
        steps = len(stream.chunks)
        keep = set(np.linspace(0, steps - 1, min(config.max_samples, steps)).round().astype(int).tolist())
        recorded: dict[str, list[np.ndarray]] = {name: [] for name in spec.input_names}
        low = {name: np.inf for name in spec.input_names + spec.output_names}
        high = {name: -np.inf for name in low}

        def record(k: int, feeds: dict[str, np.ndarray], results: dict[str, np.ndarray]) -> None:
            for name, value in (*feeds.items(), *results.items()):
                low[name], high[name] = min(low[name], float(value.min())), max(high[name], float(value.max()))
            if k in keep:
                for name in spec.input_names:
                    recorded[name].append(feeds[name])

        session.stream(stream.chunks, ctx.progress, f"{ctx.node_id}: torch", observe=record)
        np.savez(out / SAMPLES_FILE, **{name: np.stack(values).astype(np.float32) for name, values in recorded.items()})
        ranges = {name: {"min": low[name], "max": high[name]} for name in low}
        (out / RANGES_FILE).write_text(json.dumps({"steps": steps, "samples": len(keep), "ranges": ranges}, indent=1) + "\n")
