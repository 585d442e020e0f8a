"""Error between a backend's streamed outputs and the reference's, overall and over time."""

from __future__ import annotations

import math

import numpy as np

# errors below this fraction of an output's RMS are rounding, not drift: they do not count in the drift ratio
DRIFT_FLOOR = 1e-4
# how many of a stream's largest per-call errors its record lists (step and size): where a glitch is
WORST_CALLS = 5
# A CTC output that is log-probabilities (log_softmax in the model) is compared as the posteriors it encodes, exp of
# its values: a decoder reads those, and log-probabilities weigh an error in a class at one in a million like one in
# the class decoded. Core ML's fp16 log_softmax returns -103 for a class PyTorch puts at -17 (exp(-17) is below fp16's
# smallest subnormal); int16x8 LiteRT puts classes PyTorch has at -8 at -13. As log-probabilities such files failed
# at SQNR 2.6 and 14 dB with their transcripts unchanged; as posteriors the error is what moves a decision.
COMPARED_AS_PROBABILITIES = "probabilities (exp of the log-probability output)"


def sqnr_db(reference: np.ndarray, error: np.ndarray) -> float:
    """10 log10(sum ref^2 / sum error^2); inf for an exact match, -inf for a silent reference with an error."""
    signal, noise = float((reference.astype(np.float64) ** 2).sum()), float((error.astype(np.float64) ** 2).sum())
    if noise == 0:
        return math.inf
    return 10 * math.log10(signal / noise) if signal > 0 else -math.inf


def compare(reference: np.ndarray, candidate: np.ndarray, steps: int, window_steps: int) -> dict:
    """Both arrays are [steps, ...] (one row per chunk). Magnitude, direction and per-window drift of the error."""
    ref = reference.reshape(steps, -1).astype(np.float64)
    got = candidate.reshape(steps, -1).astype(np.float64)
    error = got - ref
    norm = np.linalg.norm(ref) * np.linalg.norm(got)
    windows = []
    for start in range(0, steps, window_steps):
        part = error[start : start + window_steps]
        windows.append({"end_step": start + len(part), "max_abs": float(np.abs(part).max()), "rms": float(np.sqrt((part**2).mean()))})
    reference_rms = float(np.sqrt((ref**2).mean()))
    floor = DRIFT_FLOOR * reference_rms
    thirds = np.array_split(np.sqrt((error**2).mean(axis=1)), 3) if steps >= 3 else [np.zeros(1)] * 3
    first, last = float(thirds[0].mean()) + floor, float(thirds[-1].mean()) + floor
    rms = float(np.sqrt((error**2).mean()))
    call_max_abs = np.abs(error).max(axis=1)
    worst = np.argsort(-np.nan_to_num(call_max_abs, nan=np.inf), kind="stable")[:WORST_CALLS]
    return {
        "max_abs": float(call_max_abs.max()),
        # each call's largest error, for `gates.judge` to count the calls over a bound (kept out of the records) ...
        "call_max_abs": call_max_abs,
        # ... and where the largest ones are, for the record
        "worst_calls": [{"step": int(k), "max_abs": float(call_max_abs[k])} for k in worst],
        "reference_max_abs": float(np.abs(ref).max()),
        "rms": rms,
        "reference_rms": reference_rms,
        "rms_rel": rms / reference_rms if reference_rms > 0 else (0.0 if rms == 0 else math.inf),
        "sqnr_db": sqnr_db(ref, error),
        "cosine": float((ref * got).sum() / norm) if norm > 0 else float(np.array_equal(ref, got)),
        # RMS error over the last third of the stream relative to the first: > 1 means error accumulates
        "drift_ratio": last / first if first > 0 else 1.0,
        "drift": windows,
    }


def per_frame(outputs: np.ndarray, time_axis: int) -> np.ndarray:
    """[steps, *chunk_shape] -> [frames, classes], frames from all chunks in time order."""
    moved = np.moveaxis(outputs, time_axis + 1, 1)
    return moved.reshape(-1, moved.shape[-1])


def log_probability_outputs(spec, reference: dict[str, np.ndarray]) -> set[str]:
    """The CTC outputs whose reference frames are log-probabilities: every value <= 0 and each frame's probabilities
    summing to 1."""
    found = set()
    for o in spec.outputs:
        if o.kind != "ctc_logits" or o.name not in reference:
            continue
        frames = per_frame(reference[o.name], o.time_axis).astype(np.float64)
        if frames.size and frames.max() <= 1e-5 and np.abs(np.log(np.exp(frames).sum(axis=-1))).max() <= 1e-3:
            found.add(o.name)
    return found


def as_probabilities(values: np.ndarray) -> np.ndarray:
    return np.exp(values.astype(np.float64))
