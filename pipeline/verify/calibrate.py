"""calibrate: record (chunk, state) pairs while the PyTorch reference streams real calibration speech.

INT8 calibration must see the states the model really reaches after minutes of speech, never
zeros or random state: a recurrent cell state's range only shows up in a closed loop. And it must
see the field, not only clean studio speech: after the data's part streamed as it is (the `fit`
part, clean, when planned from a manifest), each of `augmented_copies` calibration copies of it
(`pipeline.audio.augment.calibration_copy`: speed, room, noise, gain) streams as a closed loop of
its own, from the initial state, as the reference streams.

`calibration.npz` holds, per graph input, [samples, *shape] arrays taken at evenly spaced calls
over all those streams, one after the other, plus the calls at which each state input and each
state output reaches its smallest and largest value (a quantizer that measures ranges on the
samples then gives every state the range it really ranges over, which the state-range guards
require: a buffer state's extreme chunk is easily missed between evenly spaced samples);
`extents.npz` the elementwise min and max of every state input over every call (a part of a state, one
layer's slice, has a range of its own); `ranges.json` holds the min/max of every input and
output over all of them (`ranges`), the calls (`steps`) and samples kept, and per stream
(`streams`: condition, copy, seconds, steps, samples, ranges) the same figures.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import Field, model_validator

from pipeline.audio.stream import StreamData
from pipeline.cache import Artifact
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.verify.records import EXTENTS_FILE, RANGES_FILE, SAMPLES_FILE


class CalibrateConfig(StageConfig):
    data: StreamData = Field(description="Calibration speech (streamed as it is, then as each augmented copy).")
    max_samples: int = Field(2000, gt=0, description="(chunk, state) samples kept, evenly spaced over all the streams.")
    augmented_copies: int = Field(
        2, ge=0, description="Calibration copies of the data streamed after it (speed, room, noise and gain changed), each from the initial state."
    )
    augment_version: str | None = Field(
        None, description="pipeline.audio.augment.AUGMENT_VERSION when there are augmented copies (filled in), so a change to them recalibrates."
    )

    @model_validator(mode="before")
    @classmethod
    def _augment_version(cls, values: object) -> object:
        if isinstance(values, dict) and values.get("augmented_copies", 2) > 0 and values.get("augment_version") is None:
            from pipeline.audio.augment import AUGMENT_VERSION

            values = {**values, "augment_version": AUGMENT_VERSION}
        return values


class CalibrateStage(Stage):
    name = "calibrate"
    version = "3"
    tools = ("numpy", "soxr", "torch")
    Config = CalibrateConfig

    @classmethod
    def run(cls, config: CalibrateConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        from pipeline.audio.augment import calibration_copy
        from pipeline.audio.stream import part_utterances, utterance_stream, with_condition
        from pipeline.export.session import TorchSession

        session = TorchSession(inputs["model"].path)
        spec = session.spec
        data = config.data
        indexed = part_utterances(data)
        streams = [(data.condition, 0, utterance_stream(with_condition(data, indexed), spec, data.max_seconds))]
        for copy in range(1, config.augmented_copies + 1):
            streams.append(("augmented", copy, utterance_stream(calibration_copy(indexed, data.augment_seed, copy), spec, data.max_seconds)))
        steps = sum(len(stream.chunks) for _, _, stream in streams)
        keep = set(np.linspace(0, steps - 1, min(config.max_samples, steps)).round().astype(int).tolist())
        kept: dict[int, dict[str, np.ndarray]] = {}  # call -> its inputs
        names = spec.input_names + spec.output_names
        state_names = [n for s in spec.states for n in (s.input, s.output)]
        extremes: dict[tuple[str, str], tuple[float, int, dict[str, np.ndarray]]] = {}  # (state, min|max) -> value, call, inputs
        extents: dict[str, list[np.ndarray]] = {}  # state input -> [elementwise min, elementwise max]
        per_stream = []
        offset = 0
        for condition, copy, stream in streams:
            low = {name: np.inf for name in names}
            high = {name: -np.inf for name in names}

            def record(k: int, feeds: dict[str, np.ndarray], results: dict[str, np.ndarray], offset: int = offset, low: dict = low, high: dict = high) -> None:
                values = {**feeds, **results}
                bounds = {name: (float(value.min()), float(value.max())) for name, value in values.items()}  # one pass, both uses
                for name, (lowest, highest) in bounds.items():
                    low[name], high[name] = min(low[name], lowest), max(high[name], highest)
                for state in spec.states:
                    value = np.asarray(feeds[state.input], np.float32)
                    if state.input in extents:
                        np.minimum(extents[state.input][0], value, out=extents[state.input][0])
                        np.maximum(extents[state.input][1], value, out=extents[state.input][1])
                    else:
                        extents[state.input] = [value.copy(), value.copy()]
                for name in state_names:
                    for end, value in zip(("min", "max"), bounds[name]):
                        best = extremes.get((name, end))
                        if best is None or (value < best[0] if end == "min" else value > best[0]):
                            extremes[(name, end)] = (value, offset + k, {n: np.array(feeds[n]) for n in spec.input_names})
                if offset + k in keep:
                    kept[offset + k] = {name: feeds[name] for name in spec.input_names}

            label = f"{ctx.node_id}: torch" + (f", copy {copy}" if copy else "")
            session.stream(stream.chunks, ctx.progress, label, observe=record)
            count = len(stream.chunks)
            per_stream.append(
                {
                    "condition": condition,
                    "copy": copy,
                    "seconds": stream.seconds,
                    "steps": count,
                    "samples": sum(1 for k in keep if offset <= k < offset + count),
                    "ranges": {name: {"min": low[name], "max": high[name]} for name in names},
                }
            )
            offset += count
        extreme_calls = sorted({call for _, call, _ in extremes.values()} - set(kept))
        kept |= {call: inputs for _, call, inputs in extremes.values() if call in extreme_calls}
        calls = sorted(kept)
        np.savez(out / EXTENTS_FILE, **{f"{name}.{end}": extents[name][i] for name in extents for i, end in enumerate(("min", "max"))})
        np.savez(out / SAMPLES_FILE, **{name: np.stack([kept[c][name] for c in calls]).astype(np.float32) for name in spec.input_names})
        ranges = {
            name: {"min": min(s["ranges"][name]["min"] for s in per_stream), "max": max(s["ranges"][name]["max"] for s in per_stream)}
            for name in names
        }
        document = {"steps": steps, "samples": len(calls), "extreme_samples": extreme_calls, "ranges": ranges, "streams": per_stream}
        (out / RANGES_FILE).write_text(json.dumps(document, indent=1) + "\n")
