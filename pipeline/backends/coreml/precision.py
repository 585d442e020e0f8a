"""Which ops of an fp16-compute Core ML program stay in fp32: the spectrum of a raw-PCM model.

A model that takes raw PCM computes its own spectrum (a framing conv, |re| + |im| or re^2 + im^2,
a floor, a log). In fp16 that island loses the small bins: the conv sums hundreds of products of
|x| < 1, its absolute error is a fraction of the loud bins' magnitude, and the log turns that into
a large error on the quiet bins (measured on the zoo's raw-PCM VAD: max error 11 % of the logits'
range and a state error 0.007 per call at fp16, against 0.03 % with the spectrum in fp32). DESIGN
records the same trap at 8 and 16 bits. So, for raw-PCM models, every op on a path from a PCM
input to a `log` computes in fp32; everything after the log runs in fp16.
"""

from __future__ import annotations

from typing import Any


def _input_vars(op: Any) -> list[Any]:
    values = []
    for value in op.inputs.values():
        values.extend(value if isinstance(value, (list, tuple)) else [value])
    return values


def spectrum_island(block: Any, pcm_inputs: set[str]) -> set[str]:
    """Names of the ops of `block` on a path from a PCM input to a `log` op, the logs included."""
    reached = {id(var) for name, var in block.inputs.items() if name in pcm_inputs}
    downstream = []
    for op in block.operations:  # topologically ordered
        if reached.intersection(id(v) for v in _input_vars(op)):
            reached.update(id(v) for v in op.outputs)
            downstream.append(op)
    logs = [op for op in downstream if op.op_type == "log"]
    wanted = {id(v) for op in logs for v in _input_vars(op)}
    island = {op.name for op in logs}
    for op in reversed(downstream):
        if wanted.intersection(id(v) for v in op.outputs):
            island.add(op.name)
            wanted.update(id(v) for v in _input_vars(op))
    return island


class Fp16Except:
    """`FP16ComputePrecision`'s op selector: fp16 everywhere but the spectrum island (found on the first call)."""

    def __init__(self, pcm_inputs: set[str]) -> None:
        self.pcm_inputs = pcm_inputs
        self.island: set[str] | None = None
        self.kept: list[str] = []

    def __call__(self, op: Any) -> bool:
        if self.island is None:
            block = op.enclosing_block
            while getattr(block, "outer_op", None) is not None:
                block = block.outer_op.enclosing_block
            self.island = spectrum_island(block, self.pcm_inputs)
        if op.name in self.island:
            self.kept.append(op.name)
            return False
        return True
