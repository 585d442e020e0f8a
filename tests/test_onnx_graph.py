"""keep_float_states finds a state's recurrence by graph structure, at every chunk length."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import onnx
import pytest

from pipeline import dag

from pipeline import execute as executor
from pipeline.cache import Cache
from pipeline.contract import read_contract
from pipeline.errors import UserError
from pipeline.manifest import load_manifest
from pipeline.plan import plan
from pipeline.onnx_graph import recurrence_nodes
from tests.conftest import tiny_checkpoint, write_manifest


def test_lstm_cell_state_recurrence_at_two_chunk_lengths(tmp_path: Path, tiny_manifest: dict, cache_dir: Path) -> None:
    tiny_manifest.update(chunk_ms=[20, 40])
    tiny_manifest["model"]["kwargs"] = {"hidden": 32, "layers": 2}

    tiny_checkpoint(Path(tiny_manifest["model"]["checkpoint"]), hidden=32, layers=2)
    graph = plan(load_manifest(write_manifest(tmp_path / "m.yaml", **tiny_manifest)))
    keep = {k: v for k, v in graph.nodes.items() if k.startswith(("simplify", "onnx@", "trace"))}
    built = executor.execute(dag.Graph(list(keep.values())), Cache(cache_dir), "tiny")
    for chunk_ms in (20, 40):
        artifact = built[f"simplify@{chunk_ms}ms"].path
        contract = read_contract(artifact)
        names = set(recurrence_nodes(artifact / "model.onnx", contract.stream, ("c_in",), "v", "w"))
        ops = Counter(n.op_type for n in onnx.load(str(artifact / "model.onnx")).graph.node if n.name in names)
        cell_updates = 2 * (chunk_ms // 10)  # layers x frames
        assert ops["Tanh"] == cell_updates  # tanh(c) of every update, and no gate activation
        assert ops["Add"] == cell_updates and ops["Mul"] == cell_updates  # f * c, then + i * g
        assert "MatMul" not in ops and "Gemm" not in ops and "Sigmoid" not in ops
    with pytest.raises(UserError, match="not state inputs"):
        recurrence_nodes(artifact / "model.onnx", contract.stream, ("cell",), "v", "w")
