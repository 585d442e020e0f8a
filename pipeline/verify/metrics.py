"""Error between a backend's streamed outputs and the reference's, overall and over time."""

from __future__ import annotations

import numpy as np


def compare(reference: np.ndarray, candidate: np.ndarray, steps: int, window_steps: int) -> dict:
    """Both arrays are [steps, ...] (one row per chunk). Returns max_abs, rms, cosine and per-window drift."""
    ref = reference.reshape(steps, -1).astype(np.float64)
    got = candidate.reshape(steps, -1).astype(np.float64)
    error = got - ref
    norm = np.linalg.norm(ref) * np.linalg.norm(got)
    windows = []
    for start in range(0, steps, window_steps):
        part = error[start : start + window_steps]
        windows.append({"end_step": start + len(part), "max_abs": float(np.abs(part).max()), "rms": float(np.sqrt((part**2).mean()))})
    thirds = np.array_split(np.sqrt((error**2).mean(axis=1)), 3) if steps >= 3 else [np.zeros(1)] * 3
    first, last = float(thirds[0].mean()), float(thirds[-1].mean())
    return {
        "max_abs": float(np.abs(error).max()),
        "reference_max_abs": float(np.abs(ref).max()),
        "rms": float(np.sqrt((error**2).mean())),
        "cosine": float((ref * got).sum() / norm) if norm > 0 else float(np.array_equal(ref, got)),
        # RMS error over the last third of the stream relative to the first: > 1 means error accumulates
        "drift_ratio": (last / first) if first > 0 else (0.0 if last == 0 else float("inf")),
        "drift": windows,
    }


def per_frame(outputs: np.ndarray, time_axis: int) -> np.ndarray:
    """[steps, *chunk_shape] -> [frames, classes], frames from all chunks in time order."""
    moved = np.moveaxis(outputs, time_axis + 1, 1)
    return moved.reshape(-1, moved.shape[-1])
