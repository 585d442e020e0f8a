"""Publishing a rewritten ONNX graph, checked: it is streamed against its input graph before anyone trusts it."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.contract import read_contract, write_contract
from pipeline.onnx_graph import ONNX_FILE as ARTIFACT
from pipeline.onnx_graph import check_onnx_io


def stream_pair(before: Path, after: Path, chunks: int, seed: int = 0) -> dict[str, float]:
    """Stream the same inputs through two ONNX artifact dirs, each on its own state; max abs diff per output."""
    from pipeline.backends import get_backend

    onnxruntime = get_backend("onnxruntime")
    first, second = onnxruntime.open_session(before), onnxruntime.open_session(after)
    stream = first.spec
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
