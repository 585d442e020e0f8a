"""simplify: onnxslim's graph clean-up (constant folding, dead nodes, fusions), checked numerically.

The simplified graph is streamed against its input graph on onnxruntime, each with its own
state, before it is published; `verify` later holds it to the PyTorch reference as well.
"""

from __future__ import annotations


from pathlib import Path

import numpy as np
from pydantic import Field

from pipeline.cache import Artifact
from pipeline.contract import read_contract, write_contract
from pipeline.dag import Stage, StageConfig, StageContext
from pipeline.errors import InternalError
from pipeline.stages.onnx_export import ARTIFACT, check_onnx_io


class SimplifyConfig(StageConfig):
    check_chunks: int = Field(200, description="Chunks streamed through both graphs to check the rewrite.")
    check_atol: float = Field(1e-5, description="Largest output difference the rewrite may introduce.")


def stream_pair(before: Path, after: Path, chunks: int, seed: int = 0) -> dict[str, float]:
    """Stream the same inputs through two ONNX artifact dirs, each on its own state; max abs diff per output."""
    from pipeline.runtimes import open_session

    first, second = open_session("onnxruntime", before), open_session("onnxruntime", after)
    stream = first.stream
    rng = np.random.default_rng(seed)
    worst = {name: 0.0 for name in stream.output_names}
    for _ in range(chunks):
        chunk = {i.name: (rng.standard_normal(i.shape) * (0.1 if stream.frontend.kind == "pcm" else 2.0)).astype(np.float32) for i in stream.inputs}
        _, a = first.advance(chunk)
        _, b = second.advance(chunk)
        for name in stream.output_names:
            worst[name] = max(worst[name], float(np.abs(a[name] - b[name]).max()))
    return worst


def publish_rewrite(model, source: Path, out: Path, chunks: int, atol: float, stage: str, node_id: str) -> tuple[dict, dict]:
    """Save a rewritten graph next to its input's contract, then stream both: (worst error, those above atol) per output."""
    import onnx

    contract = read_contract(source)
    onnx.save(model, str(out / ARTIFACT))
    check_onnx_io(out / ARTIFACT, contract.stream.input_names, contract.stream.output_names, f"stage {stage} ({node_id})")
    write_contract(out, contract.model_copy(update={"artifact": ARTIFACT}))
    worst = stream_pair(source, out, chunks)
    return worst, {name: err for name, err in worst.items() if err > atol}


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



