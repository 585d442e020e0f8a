"""How the recipe search sees QNN: an a8w8 graph can keep a state's recurrence, a raw-PCM front end or single ONNX
nodes' activations at 16 bits; an a16w8 graph single nodes' weights.

HTP runs mixed 8/16-bit graphs natively (get_qnn_qdq_config adds the conversions), so a kept a8w8 unit
becomes a 16-bit island inside the 8-bit graph (qnn-qdq's `sixteen_bit_states` / `sixteen_bit`).
a16w8's activations are all 16-bit already; what it loses is in its 8-bit weights (an output layer's
near-tied logits flip), so a kept a16w8 op gets 16-bit weights and runs as a16w16 (`sixteen_bit_weights`),
ranked by the error each weight alone on its 8-bit grid adds to the model's outputs. Calibration:
min-max or a percentile of each tensor's histogram (state pairs keep their recorded range either way:
the state-range guard).

Candidates are streamed on onnxruntime's CPU EP running the QDQ graph (the HTP simulator costs
~0.1 s a call on the default model, ~2 min per candidate over the held-out speech); the CPU EP
drifts differently from HTP over a stream, so the chosen recipe is confirmed on the simulator,
compiled for the SoC verification streams on, before it is accepted (`confirm_session`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.backends.qnn.qdq import CHANNEL_AXIS, QdqConfig, QdqStage, weighted_nodes
from pipeline.errors import InternalError, ToolchainError
from pipeline.quant.quantizer import Quantizer, Space, onnx_covered, onnx_sensitivity_of
from pipeline.quant.recipe import Recipe


class QnnQuantizer(Quantizer):
    stage = QdqStage
    bits = {"a8w8": 8, "a16w8": 16}
    kept_at = {"a8w8": "16-bit activations", "a16w8": "16-bit weights (a16w16 ops)"}
    search_runtime = "onnxruntime CPU EP running the QDQ graph (the search's proxy)"
    confirm_runtime = "QNN HTP simulator"

    def space(self, precision: str) -> Space:
        return Space(states=precision == "a8w8", ops=True, frontends=precision == "a8w8", methods=("minmax", "percentile"))

    def pinned(self, config: QdqConfig) -> bool:
        return bool(config.sixteen_bit_states or config.sixteen_bit or config.sixteen_bit_frontends or config.sixteen_bit_weights)

    def recipe_of(self, config: QdqConfig) -> Recipe:
        return Recipe(
            keep_states=config.sixteen_bit_states,
            keep_frontends=config.sixteen_bit_frontends,
            keep_ops=config.sixteen_bit_weights if config.precision == "a16w8" else config.sixteen_bit,
            calibration=config.calibrate_method,
            source="pin" if self.pinned(config) else "stock",
        )

    def apply(self, config: QdqConfig, recipe: Recipe) -> QdqConfig:
        if config.precision == "a16w8":
            if recipe.keep_states or recipe.keep_frontends:
                raise InternalError(f"{config.variant}: an a16w8 recipe keeps weights only, got {recipe.describe()}")
            return config.model_copy(
                update={"sixteen_bit_weights": tuple(dict.fromkeys(config.sixteen_bit_weights + recipe.keep_ops)), "calibrate_method": recipe.calibration}
            )
        return config.model_copy(
            update={
                "sixteen_bit_states": tuple(dict.fromkeys(config.sixteen_bit_states + recipe.keep_states)),
                "sixteen_bit": tuple(dict.fromkeys(config.sixteen_bit + recipe.keep_ops)),
                "sixteen_bit_frontends": tuple(dict.fromkeys(config.sixteen_bit_frontends + recipe.keep_frontends)),
                "calibrate_method": recipe.calibration,
            }
        )

    def sensitivity(self, config: QdqConfig, inputs: dict, samples: list[dict]) -> list[dict]:
        if config.precision == "a16w8":
            return weight_sensitivity(inputs, config, samples)
        return onnx_sensitivity_of(inputs, samples, self.bits[config.precision])  # the qnn-legalized graph qnn-qdq quantizes

    def covered(self, config: QdqConfig, inputs: dict, recipe: Recipe) -> tuple[str, ...]:
        if config.precision == "a16w8":  # a kept node's weight, and every other node reading that same weight
            weighted = _weighted(inputs)
            kept = {weighted[n][0] for n in recipe.keep_ops if n in weighted}
            return (*recipe.keep_ops, *(n for n, (w, _) in weighted.items() if w in kept and n not in recipe.keep_ops))
        return onnx_covered(inputs, recipe, include_log=False)

    def session(self, artifact_dir: Path):
        from pipeline.backends.qnn.session import QdqCpuSession

        return QdqCpuSession(artifact_dir)

    def confirm_session(self, artifact_dir: Path, options: dict[str, Any]):
        from pipeline.backends.qnn.options import DEFAULT_SOCS
        from pipeline.backends.qnn.session import QnnSession

        # the QDQ candidate compiled on the fly for the SoC verification streams on (the manifest's first)
        try:
            return QnnSession(artifact_dir, soc=options.get("soc") or DEFAULT_SOCS[0].model_dump())
        except Exception as exc:  # onnxruntime raises a bare Fail for a graph HTP refuses to finalize
            raise ToolchainError(f"HTP cannot run this candidate: {str(exc).splitlines()[0][:300]}", tool="onnxruntime-qnn") from exc


def _weighted(inputs: dict) -> dict[str, tuple[str, str]]:
    import onnx

    from pipeline.contract import read_contract

    source = inputs["model"].path
    return weighted_nodes(onnx.load(str(source / read_contract(source).artifact), load_external_data=False).graph)


def fake_quantized(weight: np.ndarray, bits: int, axis: int | None) -> np.ndarray:
    """`weight` rounded onto qnn-qdq's grid for it: asymmetric min-max with 2^bits levels (zero exact), one per channel
    along `axis` (None: one for the tensor)."""
    values = weight.astype(np.float64)
    moved = values.reshape(1, -1) if axis is None else np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)
    low, high = np.minimum(moved.min(axis=1, keepdims=True), 0.0), np.maximum(moved.max(axis=1, keepdims=True), 0.0)
    scale = np.where(high > low, (high - low) / (2**bits - 1), 1.0)
    zero = np.round(-low / scale)
    quantized = (np.clip(np.round(moved / scale) + zero, 0, 2**bits - 1) - zero) * scale
    if axis is None:
        return quantized.reshape(values.shape).astype(weight.dtype)
    shape = (values.shape[axis], *np.delete(values.shape, axis))
    return np.moveaxis(quantized.reshape(shape), 0, axis).astype(weight.dtype)


def _sqnr(reference: np.ndarray, value: np.ndarray) -> float:
    error, signal = float(((value.astype(np.float64) - reference) ** 2).sum()), float((reference.astype(np.float64) ** 2).sum())
    if error == 0:
        return math.inf
    return 10 * math.log10(signal / error) if signal > 0 else -math.inf


def weight_sensitivity(inputs: dict, config: QdqConfig, samples: list[dict]) -> list[dict]:
    """Per node with a weight (Conv, Gemm, MatMul by an initializer) of the graph qnn-qdq quantizes, the error that weight
    alone on its 8-bit grid adds to the model's outputs (every other tensor float, over the recorded calls): the lowest
    output SQNR first. `node` is the ONNX node name `sixteen_bit_weights` takes; `weight_sqnr_db` is the weight's own."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from pipeline.contract import read_contract
    from pipeline.quant.sensitivity import tensor_figures

    source = inputs["model"].path
    contract = read_contract(source)
    model = onnx.load(str(source / contract.artifact))
    initializers = {t.name: t for t in model.graph.initializer}
    outputs = [o.name for o in contract.stream.outputs]
    feeds = [{n: np.asarray(f[n], dtype=np.float32) for n in contract.stream.input_names} for f in samples]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3

    def run(proto) -> list[np.ndarray]:
        session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
        calls = [session.run(outputs, f) for f in feeds]
        return [np.stack([c[k] for c in calls]) for k in range(len(outputs))]

    reference = run(model)
    figures = []
    kept = {w for n, (w, _) in weighted_nodes(model.graph).items() if n in config.sixteen_bit_weights}
    seen: set[str] = set()
    for node, (weight, op) in weighted_nodes(model.graph).items():
        if weight in kept or weight in seen:  # a weight two nodes read (one per frame of a chunk) is one unit, its first node's
            continue
        seen.add(weight)
        value = numpy_helper.to_array(initializers[weight])
        axis = CHANNEL_AXIS.get(op) if config.per_channel else None
        grid = fake_quantized(value, 8, axis)
        original = onnx.TensorProto()
        original.CopyFrom(initializers[weight])
        initializers[weight].CopyFrom(numpy_helper.from_array(grid, weight))
        try:
            got = run(model)
        finally:
            initializers[weight].CopyFrom(original)
        figure = tensor_figures(weight, op, node, [value], 8)
        figure["weight_sqnr_db"] = _sqnr(value, grid)
        figure["sqnr_alone_db"] = min(_sqnr(r, g) for r, g in zip(reference, got))  # at the model's outputs
        figures.append(figure)
    return sorted(figures, key=lambda f: (f["sqnr_alone_db"], f["tensor"]))


QUANTIZER = QnnQuantizer()
