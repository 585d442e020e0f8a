"""simplify: onnxslim's graph clean-up (constant folding, dead nodes, fusions), checked numerically.

The simplified graph is streamed against its input graph on onnxruntime, each with its own
state, before it is published; `verify` later holds it to the PyTorch reference as well.
"""

from __future__ import annotations


from pathlib import Path

from pydantic import Field

from pipeline.cache import Artifact
from pipeline.contract import read_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import InternalError
from pipeline.export.rewrite import publish_rewrite


class SimplifyConfig(StageConfig):
    check_chunks: int = Field(200, description="Chunks streamed through both graphs to check the rewrite.")
    check_atol: float = Field(1e-5, description="Largest output difference the rewrite may introduce.")


class SimplifyStage(Stage):
    name = "simplify"
    version = "1"
    tools = ("onnx", "onnxslim", "onnxruntime")
    Config = SimplifyConfig

    @classmethod
    def run(cls, config: SimplifyConfig, inputs: dict[str, Artifact], out: Path, ctx: StageContext) -> None:
        import onnx
        import onnxslim

        source = inputs["model"].path
        slim = onnxslim.slim(onnx.load(str(source / read_contract(source).artifact)))
        worst, bad = publish_rewrite(slim, source, out, config.check_chunks, config.check_atol, "simplify", ctx.node_id)
        if bad:
            raise InternalError(f"onnxslim changed outputs beyond {config.check_atol:g}: {bad} ({ctx.node_id})")
        ctx.log(f"simplified graph matches its input: worst {max(worst.values()):.2g}")



