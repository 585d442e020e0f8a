"""How the recipe search sees Core ML: w8a8 can keep a state's recurrence, single ops' activations or the
percentile calibration; int8w can keep single weights in fp16.

- w8a8: coremltools' activation quantization puts int8 quantize/dequantize pairs on the inputs and
  outputs of `linear`, `conv`, `add` and the pools (`insert_prefix_/insert_suffix_quantize_dequantize_pair`);
  an op named in `op_name_configs` with None keeps its fp16 activations. Units: a state's recurrence
  (`recurrence.recurrence_ops`), such an op, and the calibration method (`minmax`, then `percentile`,
  see `interpreter.activation_ranges`).
- int8w: weights only, nothing calibrated; a unit is one weight const left in fp16.

Sensitivity runs the float (fp16) program in the MIL interpreter over the recorded pairs: per op, the
tensors its quantization rounds (its inputs and output) with the figures of
`pipeline.quant.sensitivity.tensor_figures`; for int8w, each weight on coremltools' own grid
(int8 symmetric, one scale per output channel). Names are MIL op names, what `apply`'s fields take.
"""

from __future__ import annotations

import functools
import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.backends.coreml.convert import CoreMlConfig, CoreMlStage
from pipeline.errors import InternalError
from pipeline.quant.quantizer import Quantizer, Space
from pipeline.quant.recipe import Recipe

# the op types coremltools 9.0's activation quantization passes put int8 pairs around (see the module docstring)
ACTIVATION_OPS = ("conv", "linear", "add", "avg_pool", "max_pool")
DEFAULT_WEIGHT_THRESHOLD = 2048  # coremltools' own, as CoreMlStage applies it


class CoreMlQuantizer(Quantizer):
    stage = CoreMlStage
    bits = {"w8a8": 8, "int8w": 8}
    kept_at = {"w8a8": "float16 activations", "int8w": "float16 weights"}

    def space(self, precision: str) -> Space:
        if precision == "w8a8":
            return Space(states=True, ops=True, methods=("minmax", "percentile"))
        if precision == "int8w":
            return Space(states=False, ops=True, methods=("minmax",))
        return Space(states=False, ops=False, methods=("minmax",))

    def pinned(self, config: CoreMlConfig) -> bool:
        return bool(config.keep_float_states or config.keep_fp16_ops or config.keep_float_weights)

    def recipe_of(self, config: CoreMlConfig) -> Recipe:
        ops = config.keep_fp16_ops if config.precision == "w8a8" else config.keep_float_weights
        return Recipe(
            keep_states=config.keep_float_states,
            keep_ops=ops,
            calibration=config.calibration_method,
            source="pin" if self.pinned(config) else "stock",
        )

    def apply(self, config: CoreMlConfig, recipe: Recipe) -> CoreMlConfig:
        if config.precision == "w8a8":
            return config.model_copy(
                update={
                    "keep_float_states": tuple(dict.fromkeys(config.keep_float_states + recipe.keep_states)),
                    "keep_fp16_ops": tuple(dict.fromkeys(config.keep_fp16_ops + recipe.keep_ops)),
                    "calibration_method": recipe.calibration,
                }
            )
        if config.precision == "int8w":
            if recipe.keep_states or recipe.calibration != "minmax":
                raise InternalError(f"{config.variant}: an int8w recipe keeps weights only, got {recipe.describe()}")
            return config.model_copy(update={"keep_float_weights": tuple(dict.fromkeys(config.keep_float_weights + recipe.keep_ops))})
        raise InternalError(f"{config.variant}: {config.precision} takes no quantization recipe")

    def sensitivity(self, config: CoreMlConfig, inputs: dict, samples: list[dict]) -> list[dict]:
        from pipeline.quant.sensitivity import by_node

        converted = _float_program(inputs["model"].path, config)
        if config.precision == "int8w":
            figures = weight_sensitivity(converted.model._mil_program, _weight_threshold(config), converted.kept_fp32 + config.keep_float_weights)
        else:
            figures = activation_sensitivity(converted.model, samples, self.bits[config.precision], self._stock_keep(config, converted))
        return by_node(figures)

    def covered(self, config: CoreMlConfig, inputs: dict, recipe: Recipe) -> tuple[str, ...]:
        from pipeline.backends.coreml.recurrence import recurrence_ops
        from pipeline.contract import read_contract

        if not recipe.keep_states:
            return recipe.keep_ops
        source = inputs["model"].path
        program = _float_program(source, config).model._mil_program
        return (*recipe.keep_ops, *recurrence_ops(program, read_contract(source).stream, recipe.keep_states, config.variant, "quant-search"))

    def session(self, artifact_dir: Path):
        from pipeline.backends import get_backend

        return get_backend("coreml").open_session(artifact_dir)

    @staticmethod
    def _stock_keep(config: CoreMlConfig, converted: Any) -> tuple[str, ...]:
        """What stays fp16 whatever the recipe: the fp32 spectrum, and outputs coremltools cannot requantize."""
        from pipeline.backends.coreml.activations import outputs_read_inside

        return (*converted.kept_fp32, *outputs_read_inside(converted.model._mil_program), *config.keep_fp16_ops)


def _weight_threshold(config: CoreMlConfig) -> int:
    return DEFAULT_WEIGHT_THRESHOLD if config.weight_threshold is None else config.weight_threshold


@functools.lru_cache(maxsize=2)
def _converted(trace_dir: Path, precision: str, deployment_target: str, fp32_spectrum: bool, variant: str) -> Any:
    from pipeline.backends.coreml.graph import convert
    from pipeline.contract import read_contract

    return convert(trace_dir, read_contract(trace_dir), precision, deployment_target, variant, "quant-search", fp32_spectrum)


def _float_program(trace_dir: Path, config: CoreMlConfig) -> Any:
    """The fp16 program a candidate is quantized from, converted once per search (sensitivity, then each round's
    `covered`) rather than once per call: a conversion takes tens of seconds."""
    return _converted(Path(trace_dir), config.precision, config.deployment_target, config.fp32_spectrum, config.variant)


def quantized_tensors(program: Any, skip: tuple[str, ...] = ()) -> dict[str, tuple[str, tuple[str, ...]]]:
    """Per op whose activations coremltools quantizes (and that `skip` does not keep): (its type, the names of the
    values its int8 pairs round: its non-constant inputs and its output). An `add` with a constant operand gets no
    pair, as in coremltools' prefix pass."""
    chosen: dict[str, tuple[str, tuple[str, ...]]] = {}
    for op in program.functions["main"].operations:
        if op.op_type not in ACTIVATION_OPS or op.name in skip:
            continue
        operands = [op.inputs[k] for k in (("x", "y") if op.op_type == "add" else ("x",)) if k in op.inputs]
        if any(v.op is not None and v.op.op_type == "const" for v in operands):
            continue
        chosen[op.name] = (op.op_type, (*(v.name for v in operands), op.outputs[0].name))
    return chosen


def activation_sensitivity(model: Any, samples: list[dict[str, np.ndarray]], bits: int, skip: tuple[str, ...] = ()) -> list[dict]:
    """Per quantized tensor of the float program, run by the MIL interpreter over `samples`, lowest SQNR first
    (`tensor_figures`, `node` the op whose pairs round it)."""
    from pipeline.backends.coreml.graph import quiet
    from pipeline.backends.coreml.interpreter import MilInterpreter
    from pipeline.quant.sensitivity import tensor_figures

    if not samples:
        raise InternalError("w8a8 sensitivity needs recorded (chunk, state) pairs; the search got none")
    ops = quantized_tensors(model._mil_program, skip)
    wanted = {tensor for _, tensors in ops.values() for tensor in tensors}
    batches: dict[str, list[np.ndarray]] = {tensor: [] for tensor in wanted}
    with tempfile.TemporaryDirectory(prefix="speechport-sensitivity-") as tmp:
        package = Path(tmp) / "float.mlpackage"
        with quiet():
            model.save(str(package))
        interpreter = MilInterpreter(package)

        def observe(name: str, value: np.ndarray) -> None:
            if name in batches:
                batches[name].append(np.array(value, dtype=np.float32))

        for sample in samples:
            feeds = {name: np.asarray(sample[name], dtype=np.float32) for name in interpreter.inputs}
            interpreter.run(feeds, interpreter.make_state() if interpreter.states else None, observe=observe)
    figures = [
        tensor_figures(tensor, op_type, name, batches[tensor], bits)
        for name, (op_type, tensors) in ops.items()
        for tensor in tensors
        if batches[tensor]  # a value folded at load (constant) is never rounded at run time
    ]
    return sorted(figures, key=lambda f: (f["sqnr_alone_db"], f["tensor"]))


def weight_sqnr(weight: np.ndarray, bits: int = 8) -> float:
    """SQNR (dB) of `weight` on coremltools' `linear_symmetric` grid: [-(2^(bits-1) - 1), 2^(bits-1) - 1] steps of
    one scale per output channel (axis 0)."""
    values = weight.astype(np.float64)
    top = 2 ** (bits - 1) - 1
    peak = np.abs(values).max(axis=tuple(range(1, values.ndim)), keepdims=True) if values.ndim > 1 else np.abs(values).max()
    scale = np.where(peak > 0, peak / top, 1.0)
    error = float(((np.clip(np.round(values / scale), -top, top) * scale - values) ** 2).sum())
    signal = float((values**2).sum())
    if error == 0:
        return math.inf
    return 10 * math.log10(signal / error) if signal > 0 else -math.inf


def weight_sensitivity(program: Any, threshold: int, skip: tuple[str, ...] = ()) -> list[dict]:
    """Per weight const `linear_quantize_weights` would quantize (float, at least `threshold` elements, read by an op
    that `skip` does not keep), lowest SQNR on its int8 grid first; `node` is the const's op name."""
    from pipeline.quant.sensitivity import tensor_figures

    figures = []
    for op in program.functions["main"].operations:
        value = op.outputs[0].val if op.op_type == "const" else None
        if not isinstance(value, np.ndarray) or value.dtype.kind != "f" or value.size < threshold or op.name in skip:
            continue
        readers = [child for child in op.outputs[0].child_ops]
        if not readers or any(child.name in skip for child in readers):
            continue
        figure = tensor_figures(op.outputs[0].name, readers[0].op_type, op.name, [value], 8)
        figure["sqnr_alone_db"] = weight_sqnr(value)
        figures.append(figure)
    return sorted(figures, key=lambda f: (f["sqnr_alone_db"], f["tensor"]))


QUANTIZER = CoreMlQuantizer()
