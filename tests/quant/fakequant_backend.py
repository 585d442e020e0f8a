"""A backend defined outside pipeline/ whose one precision quantizes every op's values onto a coarse grid, so the
search has something to find on a tiny model: Q/DQ pairs (onnx QuantizeLinear/DequantizeLinear, run by onnxruntime)
after every op output, min-max ranges from the recorded calibration trajectories, `bits` levels; kept ops stay float."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.backends.base import Backend, Precision
from pipeline.cache import Artifact
from pipeline.contract import read_contract, write_contract
from pipeline.dag import Node, Stage, StageConfig, StageContext
from pipeline.quant.quantizer import Quantizer, Space, with_recipe
from pipeline.quant.recipe import Recipe
from pipeline.verify.gates import Tolerance

ARTIFACT = "model.onnx"


class FakeQuantConfig(StageConfig):
    bits: int = Field(5, description="Grid levels are 2^bits.")
    keep_float_states: tuple[str, ...] = ()
    keep_ops: tuple[str, ...] = ()
    calibration: str = "minmax"


def _recurrence(source: Path, states: tuple[str, ...]) -> tuple[str, ...]:
    from pipeline.onnx_graph import recurrence_nodes

    contract = read_contract(source)
    return recurrence_nodes(source / contract.artifact, contract.stream, states, "fakeq", "fakeq") if states else ()


class FakeQuantStage(Stage):
    name = "fakeq"
    version = "1"
    tools = ("onnx", "onnxruntime")
    Config = FakeQuantConfig

    @classmethod
    def run(cls, config: FakeQuantConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        import onnx
        from onnx import helper, numpy_helper

        from pipeline.quant.sensitivity import onnx_sensitivity
        from pipeline.verify.records import load_calibration

        config, record = with_recipe(QUANTIZER, config, inputs, "q")
        source = inputs["model"].path
        contract = read_contract(source)
        recorded = load_calibration(inputs["calibration"].path)
        picks = np.linspace(0, len(next(iter(recorded.values()))) - 1, 64).round().astype(int)
        figures = onnx_sensitivity(source / contract.artifact, [{k: v[i] for k, v in recorded.items()} for i in picks], config.bits)
        kept = set(config.keep_ops) | set(_recurrence(source, config.keep_float_states))
        model = onnx.load(str(source / contract.artifact))
        graph, levels = model.graph, 2**config.bits - 1
        outputs = {o.name for o in graph.output}  # graph outputs stay float (the values feeding them are on the grid)
        for f in figures:
            tensor = f["tensor"]
            if f["node"] in kept or tensor in outputs:
                continue
            low, high = min(f["min"], 0.0), max(f["max"], 0.0)
            if config.calibration == "percentile":
                high, low = 0.5 * high, 0.5 * low
            scale = max((high - low) / levels, 1e-12)
            zero = int(round(-low / scale))
            names = [f"{tensor}.{k}" for k in ("scale", "zero", "q", "dq")]
            graph.initializer.extend([numpy_helper.from_array(np.array(scale, np.float32), names[0]), numpy_helper.from_array(np.array(zero, np.uint8), names[1])])
            for node in graph.node:
                node.input[:] = [names[3] if i == tensor else i for i in node.input]
            graph.node.extend([helper.make_node("QuantizeLinear", [tensor, names[0], names[1]], [names[2]]), helper.make_node("DequantizeLinear", [names[2], names[0], names[1]], [names[3]])])
        sorted_model = _toposort(model)
        onnx.save(sorted_model, str(out / ARTIFACT))
        write_contract(out, contract.model_copy(update={"backend": "fakeq", "precision": "q", "artifact": ARTIFACT, "quantization": record}))
        (out / "ops.json").write_text(json.dumps({"histogram": {}, "recipe": record}) + "\n")


def _toposort(model):
    graph = model.graph
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending, ordered = list(graph.node), []
    while pending:
        ready = [n for n in pending if all(i in available for i in n.input)]
        if not ready:
            raise RuntimeError("cycle in the fake-quantized graph")
        for n in ready:
            ordered.append(n)
            available.update(n.output)
            pending.remove(n)
    del graph.node[:]
    graph.node.extend(ordered)
    return model


class FakeQuantizer(Quantizer):
    stage = FakeQuantStage
    bits = {"q": 5}
    kept_at = {"q": "float32"}

    def space(self, precision: str) -> Space:
        return Space(states=True, ops=True, methods=("minmax", "percentile"))

    def pinned(self, config: FakeQuantConfig) -> bool:
        return bool(config.keep_float_states or config.keep_ops)

    def recipe_of(self, config: FakeQuantConfig) -> Recipe:
        return Recipe(keep_states=config.keep_float_states, keep_ops=config.keep_ops, calibration=config.calibration, source="pin" if self.pinned(config) else "stock")

    def apply(self, config: FakeQuantConfig, recipe: Recipe) -> FakeQuantConfig:
        return config.model_copy(
            update={
                "keep_float_states": tuple(dict.fromkeys(config.keep_float_states + recipe.keep_states)),
                "keep_ops": tuple(dict.fromkeys(config.keep_ops + recipe.keep_ops)),
                "calibration": recipe.calibration,
            }
        )

    def sensitivity(self, config: FakeQuantConfig, inputs: dict, samples: list[dict]) -> list[dict]:
        from pipeline.quant.sensitivity import by_node, onnx_sensitivity

        source = inputs["model"].path
        return by_node(onnx_sensitivity(source / read_contract(source).artifact, samples, config.bits))

    def covered(self, config: FakeQuantConfig, inputs: dict, recipe: Recipe) -> tuple[str, ...]:
        return (*recipe.keep_ops, *_recurrence(inputs["model"].path, recipe.keep_states))

    def session(self, artifact_dir: Path):
        from pipeline.backends.onnxruntime.session import OnnxRuntimeSession

        return OnnxRuntimeSession(artifact_dir)


QUANTIZER = FakeQuantizer()


def lower(lowering, precision: str) -> str:
    config = FakeQuantConfig(**(lowering.options.model_dump() if lowering.options is not None else {}))
    inputs: tuple[tuple[str, str], ...] = (("model", lowering.onnx()), ("calibration", lowering.calibration()))
    recipe = lowering.search("fakeq", precision, config, inputs)
    if recipe is not None:
        inputs += (("recipe", recipe),)
    suffix = f"@{lowering.chunk.label}"
    return lowering.add(Node(f"fakeq-{precision}{suffix}", FakeQuantStage, config, inputs))


class FakeQuantOptions(FakeQuantConfig):
    pass


BACKEND = Backend(
    name="fakeq",
    description="Every op's values on a 2^bits grid (Q/DQ in ONNX, onnxruntime): a quantizer for the search's tests.",
    precisions=(Precision("q", "coarse grid", Tolerance(min_sqnr_db=13.0), calibrated=True),),
    tools=("onnx", "onnxruntime"),
    lowering="tests.quant.fakequant_backend:lower",
    session="pipeline.backends.onnxruntime.session:OnnxRuntimeSession",
    options=FakeQuantOptions,
    device_latency=False,
    runtime_label="onnxruntime (fake-quantized graph)",
    quantizer="tests.quant.fakequant_backend:QUANTIZER",
)
