"""The state-range guard, shared by every quantizing backend: a state output feeds back as its state input, so
the output's quantization must be able to represent the range the input takes on real speech.

A quantizer calibrates each tensor on the values it sees there. A state output read inside the graph only
by a Relu or a Clip, or produced by an op whose range the quantizer takes from elsewhere, can be given a
range narrower than its own state input's: then every call clamps the state and the model forgets. The
same holds where the state input enters the integer domain (the first quantize after it): a range short
of the input's clips the state fed back. Neither shows up in one call; both are checked here on the
quantized artifact, against the calibrate stage's recorded ranges (`ranges.json`), with one quantization
step of slack for rounding, plus `SAMPLED_SLACK` of the input's range where the quantizer calibrated on
the evenly spaced samples rather than on the whole stream.

Each backend finds its encodings (the tensor carrying the state's integers, or none where the path stays
float) and calls `guard`: it writes one record per state pair to `guard.json` and fails with a
`UserError` naming the tensor, both ranges and the backend's fix. Encodings are per-tensor: the recorded
ranges are per-tensor min/max, so layout (a channels-last permutation) does not matter, and a per-axis
encoding on a state is a broken assumption, not a user mistake. Where a tensor holds only part of a state
(one layer's slice of a multi-layer LSTM's state), the backend names the part's positions and the guard
holds it to the range those positions take, from the calibrate stage's elementwise extents.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from pipeline.contract import Quantization
from pipeline.errors import UserError
from pipeline.spec import StateSpec

GUARD_FILE = "guard.json"
# LiteRT and Core ML calibrate on the evenly spaced (chunk, state) samples, ranges.json spans every call of the
# stream: the tiny LSTM's c_in reaches -1128.2 in the stream and -1124.3 in its 300 samples (0.3 % of its range,
# 114 int16 steps). A twentieth of the range passes that and still fails the trap, which loses a whole side
# (a state clamped at 0 misses half or all of its range).
SAMPLED_SLACK = 0.05


@dataclass(frozen=True)
class Encoded:
    """How a state tensor is stored on one side of the loop: the artifact's tensor and its encoding (None: float).
    `region`: the flat positions of the state it holds where it holds a part of it (a layer's slice of an
    nn.LSTM's [layers, batch, hidden] state); None: the whole state."""

    tensor: str
    quantization: Quantization | None
    region: tuple[int, ...] | None = None


def part_range(need: tuple[float, float], region: tuple[int, ...] | None, extent: tuple[np.ndarray, np.ndarray] | None) -> tuple[float, float]:
    """The range a part of a state takes: over its positions' recorded elementwise extents, else the whole state's."""
    if region is None or extent is None or not region:
        return need
    low, high = extent
    index = np.asarray(region)
    return float(low.reshape(-1)[index].min()), float(high.reshape(-1)[index].max())


def representable(q: Quantization) -> tuple[float, float]:
    info = np.iinfo(q.dtype)
    return (info.min - q.zero_point) * q.scale, (info.max - q.zero_point) * q.scale


def covers(q: Quantization | None, low: float, high: float, slack: float = 0.0) -> bool:
    """Whether the encoding represents [low, high] within one step and `slack` (a float tensor represents anything)."""
    if q is None:
        return True
    can_low, can_high = representable(q)
    return can_low <= low + q.scale + slack and can_high >= high - q.scale - slack


def pair_record(state: StateSpec, need: tuple[float, float] | None, output: Quantization | None) -> dict:
    """The part of a guard record every backend writes: the state output's representable range (None: float)
    against its state input's recorded range."""
    return {
        "feeds": state.input,
        "representable": None if output is None else list(representable(output)),
        "state_input_range": None if need is None else list(need),
        "covered": need is None or covers(output, *need),
    }


def side_record(side: Encoded, need: tuple[float, float] | None, slack: float) -> dict:
    q = side.quantization
    if q is None:
        return {"tensor": side.tensor, "float": True, "covered": True}
    return {
        "tensor": side.tensor,
        "float": False,
        "dtype": q.dtype,
        "scale": q.scale,
        "zero_point": q.zero_point,
        "representable": list(representable(q)),
        "covered": need is None or covers(q, *need, slack),
    }


def _region_record(side: Encoded, need: tuple[float, float] | None) -> dict:
    """Where a side holds a part of its state: how many of the state's values, and the range they take."""
    if side.region is None:
        return {}
    return {"region_size": len(side.region), "region_range": None if need is None else list(need)}


def _encoding_text(side: Encoded) -> str:
    q = side.quantization
    assert q is not None
    low, high = representable(q)
    return f"[{low:.4g}, {high:.4g}] ({q.dtype}, scale {q.scale:.3g}, zero point {q.zero_point})"


def output_problem(state: StateSpec, need: tuple[float, float], output: Encoded) -> str:
    at = "" if output.tensor == state.output else f" (tensor {output.tensor!r})"
    part = "" if output.region is None else f" ({len(output.region)} of its values)"
    return (
        f"state output {state.output!r}{at} is quantized to {_encoding_text(output)} but feeds back as "
        f"{state.input!r}, which ranges over [{need[0]:.4g}, {need[1]:.4g}]{part} on the calibration speech"
    )


def input_problem(state: StateSpec, need: tuple[float, float], entry: Encoded) -> str:
    part = "" if entry.region is None else f" ({len(entry.region)} of its values)"
    return (
        f"state input {state.input!r} is quantized on entry (tensor {entry.tensor!r}) to {_encoding_text(entry)}, "
        f"short of the [{need[0]:.4g}, {need[1]:.4g}] it ranges over{part} on the calibration speech"
    )


def guard(
    states: tuple[StateSpec, ...],
    ranges: dict[str, dict] | None,
    outputs: dict[str, list[Encoded]],
    entries: dict[str, list[Encoded]],
    out: Path,
    *,
    variant: str,
    where: str,
    fix: Callable[[list[str]], str],
    extents: dict[str, tuple[np.ndarray, np.ndarray]] | None = None,
) -> dict:
    """Check every state pair, write `guard.json` (keyed by state output) and fail naming each short tensor.

    `outputs`: state output name -> the tensors whose encodings it carries (several where it concatenates
    quantized parts, which a quantizer gives one shared range), or one float `Encoded`; `entries`: state input
    name -> the first quantized tensors reading it (none: it stays float); `ranges`: the calibrate stage's
    recorded ranges, None where the artifact was built without (a float-activation variant); `fix`: the
    backend's remedy for the short state inputs. The quantizers calibrate on samples of the stream, so
    `SAMPLED_SLACK` of the range is allowed. `extents`: state input name -> its elementwise min and max over
    the stream (the calibrate stage's `extents.npz`), which give a part of a state (an `Encoded.region`) its own
    range; without them a part is held to the whole state's."""
    record, problems, short = {}, [], []
    extents = extents or {}
    for s in states:
        whole = None if ranges is None else (float(ranges[s.input]["min"]), float(ranges[s.input]["max"]))

        def need_of(side: Encoded, whole: tuple[float, float] | None = whole, name: str = s.input) -> tuple[float, float] | None:
            return None if whole is None else part_range(whole, side.region, extents.get(name))

        def slack_of(side: Encoded) -> float:
            need = need_of(side)
            return 0.0 if need is None else SAMPLED_SLACK * (need[1] - need[0])

        def short_of(side: Encoded) -> bool:
            need = need_of(side)
            return need is not None and not covers(side.quantization, *need, slack_of(side))

        parts, entry = outputs[s.output], entries.get(s.input, [])
        failing = [p for p in parts if short_of(p)]
        shown = (failing or [p for p in parts if p.quantization is not None] or parts)[0]
        sides = {
            "output": [side_record(p, need_of(p), slack_of(p)) | _region_record(p, need_of(p)) for p in parts],
            "input": [side_record(e, need_of(e), slack_of(e)) | _region_record(e, need_of(e)) for e in entry]
            or [side_record(Encoded(s.input, None), whole, 0.0)],
        }
        record[s.output] = pair_record(s, whole, shown.quantization) | {"slack": slack_of(shown)} | sides
        record[s.output]["covered"] = all(side["covered"] for side in (*sides["output"], *sides["input"]))
        if whole is None:
            continue
        problems += [output_problem(s, need_of(p), p) for p in failing]
        problems += [input_problem(s, need_of(e), e) for e in entry if short_of(e)]
        if not record[s.output]["covered"]:
            short.append(s.input)
    (out / GUARD_FILE).write_text(json.dumps(record, indent=1) + "\n")
    if problems:
        raise UserError(
            f"{variant}: " + "; ".join(problems) + ": every call would clamp the recurrent state, and the model forgets",
            where=where,
            hint=fix(short),
        )
    return record
