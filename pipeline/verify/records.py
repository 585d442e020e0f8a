"""What the reference and calibrate stages leave on disk, and how other stages read it.

- reference: `outputs.npz` (every non-state output of every call, [steps, ...]), `teacher.npz`
  (call indices of the teacher-forced windows with the state going into and coming out of each),
  `stream.json` (steps, truth, the reference transcript and its CER);
- calibrate: `calibration.npz` (per graph input, [samples, ...] recorded at evenly spaced calls of
  the reference streaming real speech), `ranges.json` (min/max of every input and output),
  `extents.npz` (per state input, its elementwise min and max over every call: `<name>.min`, `<name>.max`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OUTPUTS_FILE = "outputs.npz"
TEACHER_FILE = "teacher.npz"
STREAM_FILE = "stream.json"
SAMPLES_FILE = "calibration.npz"
RANGES_FILE = "ranges.json"
EXTENTS_FILE = "extents.npz"


def teacher_steps(steps: int, windows: int, per_window: int) -> np.ndarray:
    """Sorted call indices of `windows` windows of `per_window` calls, the first at 0 and the last ending the stream."""
    per_window = min(per_window, steps)
    starts = np.linspace(0, steps - per_window, windows).round().astype(int) if windows > 1 else np.zeros(1, int)
    return np.unique(np.concatenate([np.arange(s, s + per_window) for s in starts]))


def load_teacher(artifact: Path) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(call indices, state input name -> [calls, ...], state output name -> [calls, ...])."""
    stored = np.load(artifact / TEACHER_FILE)
    steps = stored["steps"]
    inputs = {k.removeprefix("in."): stored[k] for k in stored.files if k.startswith("in.")}
    outputs = {k.removeprefix("out."): stored[k] for k in stored.files if k.startswith("out.")}
    return steps, inputs, outputs


def load_calibration(artifact: Path) -> dict[str, np.ndarray]:
    return dict(np.load(artifact / SAMPLES_FILE))


def load_extents(artifact: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """State input name -> (elementwise min, elementwise max) over the calibration stream; {} where not recorded."""
    path = artifact / EXTENTS_FILE
    if not path.is_file():
        return {}
    stored = np.load(path)
    names = {k.rsplit(".", 1)[0] for k in stored.files}
    return {name: (stored[f"{name}.min"], stored[f"{name}.max"]) for name in names}
