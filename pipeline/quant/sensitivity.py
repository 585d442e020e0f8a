"""Per-tensor sensitivity on the float graph: each tensor's recorded range, and the error it alone adds.

For every value an op computes, over recorded (chunk, state) pairs of the calibration speech: its
min/max (what a min-max calibrator gives it), its RMS, and the SQNR it keeps when it alone is put
on that grid at the target bit width with every other tensor float. A spectrum or a cell state
with a wide range and small typical values shows a low SQNR here; which of them matter over
minutes of speech is for the search to measure by streaming. ONNX graphs (LiteRT and QNN lower
from the same one) go through onnxruntime's own `qdq_loss_debug` to expose every intermediate.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path

import numpy as np

# a tensor ranked by the SQNR its own grid leaves it; constant-like values (weights folded away, shapes) are skipped
_SKIP_OPS = {"Shape", "Constant", "ConstantOfShape", "Gather", "Unsqueeze", "Squeeze", "Reshape", "Flatten", "Transpose", "Slice", "Concat", "Split", "Identity", "Cast"}


def grid_sqnr(values: np.ndarray, bits: int, low: float, high: float) -> float:
    """SQNR (dB) of `values` rounded onto the asymmetric min-max grid [low, high] with 2^bits levels."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high <= low:
        return math.inf
    scale = (high - low) / (2**bits - 1)
    zero = np.round(-low / scale)
    quantized = (np.clip(np.round(values / scale) + zero, 0, 2**bits - 1) - zero) * scale
    error = float(((quantized - values) ** 2).sum())
    signal = float((values**2).sum())
    if error == 0:
        return math.inf
    return 10 * math.log10(signal / error) if signal > 0 else -math.inf


def tensor_figures(name: str, op: str, node: str, batches: list[np.ndarray], bits: int) -> dict:
    values = np.concatenate([np.ravel(b).astype(np.float64) for b in batches])
    low, high = float(values.min()), float(values.max())
    rms = float(np.sqrt((values**2).mean()))
    return {
        "tensor": name,
        "node": node,
        "op": op,
        "min": low,
        "max": high,
        "rms": rms,
        # a wide range over small typical values is what 8 bits loses
        "range_over_rms": (max(abs(low), abs(high)) / rms) if rms > 0 else math.inf,
        "sqnr_alone_db": grid_sqnr(values, bits, low, high),
    }


class _Reader:
    def __init__(self, samples: list[dict[str, np.ndarray]]) -> None:
        self._samples = samples

    def get_next(self):  # CalibrationDataReader protocol
        return None

    def __iter__(self):
        return iter(self._samples)


def onnx_sensitivity(onnx_path: Path, samples: list[dict[str, np.ndarray]], bits: int) -> list[dict]:
    """Per node output of the float ONNX graph, lowest SQNR first (see `tensor_figures`)."""
    import onnx
    from onnxruntime.quantization.qdq_loss_debug import collect_activations, modify_model_output_intermediate_tensors

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    producers = {o: (n.name, n.op_type) for n in graph.node for o in n.output}
    with tempfile.TemporaryDirectory(prefix="speechport-sensitivity-") as tmp:
        # on a private copy: onnxruntime's shape inference writes (and deletes) `<model>-inferred.onnx` beside its
        # input, which would be inside a published cache artifact, raced by a parallel search on the same graph
        private = Path(tmp) / "model.onnx"
        shutil.copyfile(onnx_path, private)
        augmented = Path(tmp) / "augmented.onnx"
        modify_model_output_intermediate_tensors(str(private), str(augmented))
        activations = collect_activations(str(augmented), _Reader(samples), execution_providers=["CPUExecutionProvider"])
    figures = [
        tensor_figures(name, producers[name][1], producers[name][0], batches, bits)
        for name, batches in activations.items()
        if name in producers and producers[name][1] not in _SKIP_OPS and producers[name][0]
    ]
    return sorted(figures, key=lambda f: (f["sqnr_alone_db"], f["tensor"]))


def by_node(figures: list[dict]) -> list[dict]:
    """One entry per node (its worst output), in the order of `figures`."""
    seen: dict[str, dict] = {}
    for f in figures:
        seen.setdefault(f["node"], f)
    return list(seen.values())
