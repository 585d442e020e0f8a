"""speechport's MIL reference interpreter: runs a saved Core ML ML Program in numpy.

coremltools converts and saves `.mlpackage` files on Linux, but prediction needs Apple's
Core ML framework. To verify an iOS artifact by streaming real speech through it, we load
the saved program back into MIL (`coremltools.converters.mil.frontend.milproto.load`) and
compile its `main` function, once, into a flat list of numpy steps (see `mil_ops`):
constants and constexpr weights are materialized at load, ops whose inputs are all
constant are folded at load, and a call is one pass over the steps with no MIL objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from pipeline.backends.coreml import mil_layout, mil_ops, mil_quant, mil_recurrent

Observer = Callable[[str, np.ndarray], None]
KERNELS: dict[str, Callable] = {**mil_ops.OPS, **mil_layout.OPS, **mil_quant.OPS, **mil_recurrent.OPS}


class UnsupportedMilOp(Exception):
    """The program holds an op (or an op configuration) the interpreter does not implement."""

    def __init__(self, message: str, op_type: str | None = None) -> None:
        super().__init__(message)
        self.op_type = op_type


class MilInterpreter:
    """A numpy runner for the `main` function of a saved `.mlpackage` ML Program."""

    def __init__(self, mlpackage: Path) -> None:
        self.path = Path(mlpackage)
        main = load_program(self.path).functions["main"]
        self.inputs: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self.states: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
        self._slots: dict[int, int] = {}  # id(Var) -> slot in the value list
        self._names: list[str] = []
        self._constants: dict[int, np.ndarray] = {}  # slot -> value known at load
        for name, var in main.inputs.items():
            (self.states if _is_state(var) else self.inputs)[name] = _tensor_spec(var)
        self._input_slots = {name: self._slot(main.inputs[name]) for name in self.inputs}
        self._state_slots = {name: self._slot(main.inputs[name]) for name in self.states}
        self._steps: list[mil_ops.Step] = []
        self._step_outputs: list[list[tuple[str, int]]] = []
        self._compile(main)
        self.outputs: list[str] = [var.name for var in main.outputs]
        self._output_slots = [self._slot(var) for var in main.outputs]
        self._template: list[Any] = [None] * len(self._names)
        for slot, value in self._constants.items():
            self._template[slot] = value

    def _slot(self, var: Any) -> int:
        key = id(var)
        if key not in self._slots:
            self._slots[key] = len(self._names)
            self._names.append(var.name)
        return self._slots[key]

    def _constant(self, var: Any) -> np.ndarray | None:
        return self._constants.get(self._slots.get(id(var), -1))

    def _compile(self, main: Any) -> None:
        ctx = mil_ops.OpContext(self._slot, self._constant)
        unsupported = []
        for index, op in enumerate(main.operations):
            if op.blocks:
                unsupported.append((index, op))
            elif op.op_type == "const":
                self._constants[self._slot(op.outputs[0])] = np.asarray(op.outputs[0].val)
            elif op.op_type in mil_quant.CONSTEXPR:
                self._constants[self._slot(op.outputs[0])] = self._build(mil_quant.CONSTEXPR[op.op_type], op, ctx, index)
            elif op.op_type in KERNELS:
                step = self._build(KERNELS[op.op_type], op, ctx, index)
                outputs = [self._slot(var) for var in op.outputs]
                if self._fold(op, step, outputs):
                    continue
                self._steps.append(step)
                self._step_outputs.append([(var.name, slot) for var, slot in zip(op.outputs, outputs)])
            else:
                unsupported.append((index, op))
        if unsupported:
            index, op = unsupported[0]
            others = sorted({o.op_type for _, o in unsupported[1:]} - {op.op_type})
            also = f"; also unsupported here: {', '.join(others)}" if others else ""
            raise UnsupportedMilOp(
                f"{self.path.name}: MIL op '{op.op_type}' (output '{op.outputs[0].name}', op '{op.name}', "
                f"#{index} of main) is not implemented by speechport's MIL reference interpreter{also}; "
                f"implemented: {', '.join(sorted(KERNELS))}. Convert without it, or add a kernel to "
                "pipeline/backends/coreml/mil_*.py.",
                op_type=op.op_type,
            )

    def _build(self, builder: Callable, op: Any, ctx: mil_ops.OpContext, index: int) -> Any:
        try:
            return builder(op, ctx)
        except NotImplementedError as error:
            raise UnsupportedMilOp(
                f"{self.path.name}: MIL op '{op.op_type}' (output '{op.outputs[0].name}', op '{op.name}', "
                f"#{index} of main) uses a configuration the interpreter does not implement: {error}"
            ) from error

    def _fold(self, op: Any, step: mil_ops.Step, outputs: list[int]) -> bool:
        """Run at load an op whose inputs are all constants (shape arithmetic, const casts)."""
        if op.op_type in ("read_state", "coreml_update_state"):
            return False
        inputs = [var for value in op.inputs.values() for var in (value if isinstance(value, (list, tuple)) else [value])]
        if not all(self._constant(var) is not None for var in inputs):
            return False
        values: list[Any] = [None] * len(self._names)
        for var in inputs:
            values[self._slots[id(var)]] = self._constant(var)
        step(values)
        for slot in outputs:
            self._constants[slot] = values[slot]
        return True

    def make_state(self) -> dict[str, np.ndarray]:
        """Zero-initialised state buffers, like `MLModel.make_state()`."""
        return {name: np.zeros(shape, dtype) for name, (shape, dtype) in self.states.items()}

    def run(self, feeds: dict[str, np.ndarray], state: dict[str, np.ndarray] | None = None,
            observe: Observer | None = None) -> dict[str, np.ndarray]:
        """One call of `main`; `state` is updated in place; returns float32 copies of the outputs."""
        values = self._template.copy()
        for name, slot in self._input_slots.items():
            values[slot] = self._feed(name, feeds)
        if self.states:
            if state is None:
                raise ValueError(f"{self.path.name} has states {sorted(self.states)}: pass state=interpreter.make_state()")
            for name, slot in self._state_slots.items():
                values[slot] = self._state_buffer(name, state)
        if observe is not None:
            for name, slot in self._input_slots.items():
                observe(name, values[slot])
        with np.errstate(all="ignore"):  # inf/nan propagate silently, as on device
            if observe is None:
                for step in self._steps:
                    step(values)
            else:
                for step, outputs in zip(self._steps, self._step_outputs):
                    step(values)
                    for name, slot in outputs:
                        observe(name, values[slot])
        return {name: np.array(values[slot], dtype=np.float32) for name, slot in zip(self.outputs, self._output_slots)}

    def _feed(self, name: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        if name not in feeds:
            raise KeyError(f"{self.path.name}: no feed for input '{name}' (expected {sorted(self.inputs)}, got {sorted(feeds)})")
        shape, dtype = self.inputs[name]
        value = np.asarray(feeds[name], dtype=dtype)
        if value.shape != shape:
            raise ValueError(f"{self.path.name}: input '{name}' expects shape {shape}, got {value.shape}")
        return value

    def _state_buffer(self, name: str, state: dict[str, np.ndarray]) -> np.ndarray:
        shape, dtype = self.states[name]
        buffer = state.get(name)
        if buffer is None or buffer.shape != shape or buffer.dtype != dtype:
            got = None if buffer is None else (buffer.shape, buffer.dtype)
            raise ValueError(f"{self.path.name}: state '{name}' must be an array of {(shape, dtype)}, got {got}")
        return buffer


CALIBRATION_METHODS = ("minmax", "percentile")
PERCENTILE = 99.99  # of |x|: what the percentile method lets set a tensor's 8-bit range
_BINS = 4096  # histogram of |x| over [0, max |x|] the percentile is read from


def activation_ranges(interpreter: MilInterpreter, samples: Iterable[dict[str, np.ndarray]],
                      method: str = "minmax") -> dict[str, tuple[float, float]]:
    """(min, max) of every float function input and op output over all `samples`.

    Each sample is one full set of feeds (explicit-state programs; states, if any, start
    from zeros for every sample). These are the statistics coremltools' activation
    quantization gathers with `predict()`; see `activations.quantize_activations`.
    `method="percentile"`: each range is clipped to [-p, p], p the 99.99th percentile of |x|
    over every sample, so a rare outlier no longer sets the step every typical value is rounded to.
    """
    if method not in CALIBRATION_METHODS:
        raise ValueError(f"calibration method {method!r}: expected one of {CALIBRATION_METHODS}")
    samples = list(samples)
    ranges: dict[str, tuple[float, float]] = {}

    def observe(name: str, value: np.ndarray) -> None:
        if value.dtype.kind != "f" or value.size == 0:
            return
        low, high = float(value.min()), float(value.max())
        if name in ranges:
            low, high = min(low, ranges[name][0]), max(high, ranges[name][1])
        ranges[name] = (low, high)

    for sample in samples:
        interpreter.run(sample, interpreter.make_state() if interpreter.states else None, observe=observe)
    return ranges if method == "minmax" else _percentile_ranges(interpreter, samples, ranges)


def _percentile_ranges(interpreter: MilInterpreter, samples: list[dict[str, np.ndarray]],
                       ranges: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
    """A second pass: the histogram of |x| per tensor over [0, its max |x|] (deterministic, and bounded in
    memory whatever the number of samples), the percentile read off as the upper edge of its bin."""
    peaks = {name: max(abs(low), abs(high)) for name, (low, high) in ranges.items()}
    counts = {name: np.zeros(_BINS, np.int64) for name, peak in peaks.items() if peak > 0 and np.isfinite(peak)}

    def observe(name: str, value: np.ndarray) -> None:
        if name in counts:
            bins = np.abs(value.astype(np.float32)).ravel() * np.float32(_BINS / peaks[name])
            counts[name] += np.bincount(np.minimum(bins.astype(np.int64), _BINS - 1), minlength=_BINS)

    for sample in samples:
        interpreter.run(sample, interpreter.make_state() if interpreter.states else None, observe=observe)
    clipped = dict(ranges)
    for name, histogram in counts.items():
        cumulative = np.cumsum(histogram)
        k = int(np.searchsorted(cumulative, cumulative[-1] * PERCENTILE / 100.0))
        p = peaks[name] * min(k + 1, _BINS) / _BINS
        low, high = ranges[name]
        clipped[name] = (max(low, -p), min(high, p))
    return clipped


def load_program(mlpackage: Path) -> Any:
    """The MIL `Program` saved in `mlpackage` (a coremltools `mil.Program`)."""
    import coremltools as ct
    from coremltools.converters.mil.frontend.milproto import load as milproto

    path = Path(mlpackage)
    if not (path / "Manifest.json").is_file():
        raise FileNotFoundError(f"{path}: not an .mlpackage (no Manifest.json)")
    model = ct.models.MLModel(str(path), skip_model_load=True)
    spec = model.get_spec()
    if spec.WhichOneof("Type") != "mlProgram":
        raise UnsupportedMilOp(f"{path.name}: a '{spec.WhichOneof('Type')}' model, not an ML Program")
    # load(model_spec, specification_version, file_weights_dir): the blobs of const ops live in weights/.
    return milproto.load(spec, spec.specificationVersion, file_weights_dir=model.weights_dir or "")


def _is_state(var: Any) -> bool:
    from coremltools.converters.mil.mil import types

    return types.is_state(var.sym_type)


def _tensor_spec(var: Any) -> tuple[tuple[int, ...], np.dtype]:
    from coremltools.converters.mil.mil import types

    tensor = var.sym_type.wrapped_type() if types.is_state(var.sym_type) else var.sym_type
    shape = tuple(int(d) for d in tensor.get_shape())
    return shape, np.dtype(types.nptype_from_builtin(tensor.get_primitive()))
