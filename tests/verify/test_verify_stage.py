"""verify streams minutes of real speech, each backend on its own state, and catches what drifts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from pipeline import dag

from pipeline import execute as executor
from pipeline.cache import Artifact, Cache
from pipeline.manifest import load_manifest
from pipeline.plan import plan
from pipeline.verify.stage import RESULT_FILE, VerifyStage
from tests.conftest import REPO, write_manifest


def test_onnx_export_matches_pytorch_within_1e5_over_3000_steps(tmp_path: Path, tiny_manifest: dict, cache_dir: Path) -> None:
    tiny_manifest["verification"]["max_seconds"] = 70
    tiny_manifest["tolerances"] = {"fp32": {"max_abs": 1e-5}}
    graph = plan(load_manifest(write_manifest(tmp_path / "m.yaml", **tiny_manifest)))
    built = executor.execute(graph, Cache(cache_dir), "tiny")
    (variant,) = json.loads((built["report"].path / "report.json").read_text())["variants"]
    assert variant["steps"] >= 3000
    assert variant["outputs"]["logits"]["max_abs"] < 1e-5, variant["outputs"]
    assert variant["passed"], variant["failures"]


def test_default_onnx_target_matches_pytorch_over_minutes(tmp_path: Path, cache_dir: Path) -> None:
    graph = plan(load_manifest(REPO / "targets" / "onnx.yaml"))
    built = executor.execute(graph, Cache(cache_dir), "onnx")
    report = json.loads((built["report"].path / "report.json").read_text())
    (variant,) = report["variants"]
    assert report["passed"], variant["failures"]
    assert variant["steps"] >= 15000 and variant["audio_seconds"] >= 300
    logits = variant["outputs"]["logits"]
    # per-call rounding of onnxruntime's approximate activations, not accumulation through the state
    assert logits["max_abs"] < 5e-5 and logits["drift_ratio"] < 1.5, logits
    assert variant["cer_vs_reference"] == 0.0
    assert variant["cer"] == report["reference_cer"] < 0.5
    contract = json.loads((built[dict(graph.nodes["verify:onnxruntime-fp32@20ms"].inputs)["model"]].path / "contract.json").read_text())
    assert [(s["input"], s["output"]) for s in contract["stream"]["states"]] == [("h_in", "h_out"), ("c_in", "c_out")]


def _scale_output(source: Path, destination: Path, output: str, factor: float) -> None:
    """Copy an ONNX artifact dir, multiplying one graph output by `factor` (a miscompiled state, say)."""
    shutil.copytree(source, destination)
    model = onnx.load(str(destination / "model.onnx"))
    for node in model.graph.node:
        node.output[:] = [f"{name}_raw" if name == output else name for name in node.output]
    model.graph.initializer.append(numpy_helper.from_array(np.array(factor, np.float32), "drift_factor"))
    model.graph.node.append(helper.make_node("Mul", [f"{output}_raw", "drift_factor"], [output]))
    onnx.save(model, str(destination / "model.onnx"))


def test_verify_catches_state_drift_a_per_call_check_would_pass(tmp_path: Path, tiny_manifest: dict, cache_dir: Path) -> None:
    tiny_manifest["verification"]["max_seconds"] = 60
    graph = plan(load_manifest(write_manifest(tmp_path / "m.yaml", **tiny_manifest)))
    built = executor.execute(graph, Cache(cache_dir), "tiny")
    node = graph.nodes["verify:onnxruntime-fp32@20ms"]
    _scale_output(built["simplify@20ms"].path, tmp_path / "drifting", "c_out", 1.002)
    inputs = {role: built[dep] for role, dep in node.inputs}
    inputs["model"] = Artifact("simplify", "x", tmp_path / "drifting", "x")
    out = tmp_path / "verify"
    out.mkdir()
    VerifyStage.run(node.config, inputs, out, dag.StageContext("verify"))
    result = json.loads((out / RESULT_FILE).read_text())
    logits = result["outputs"]["logits"]
    assert not result["passed"]
    assert any(f.startswith("logits: max abs error") for f in result["failures"]), result["failures"]
    # fed the reference state, one call is almost right; carried through its own state, the error grows
    assert logits["one_step_max_abs"] < logits["max_abs"] / 3
    # the miscompiled state is caught on the state itself, one call from the reference's state
    assert result["states"]["c_out"]["max_abs"] > 1e-3 * result["states"]["c_out"]["reference_max_abs"]
    assert any(f.startswith("state c_out: one call") for f in result["failures"]), result["failures"]
