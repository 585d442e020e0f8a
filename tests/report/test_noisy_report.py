"""The noisy, reverberant copy is a condition of each variant: planned beside it, reported inside its record, failing it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline.cache import Artifact
from pipeline.dag import StageContext, StageFailure
from pipeline.report.stage import REPORT_JSON, REPORT_MD, RESULT_FILE, ReportStage, noisy_role, variant_inputs
from tests.conftest import CORPUS, tiny_checkpoint, write_manifest

VARIANT = "onnxruntime-fp32@20ms"


def _manifest(tmp: Path, **verification) -> Path:
    checkpoint = tmp / "tiny.safetensors"
    if not checkpoint.is_file():
        tiny_checkpoint(checkpoint)
    return write_manifest(
        tmp / "m.yaml",
        name="tiny",
        model={"factory": "models.lstm_ctc:build", "kwargs": {"hidden": 32, "layers": 1}, "checkpoint": str(checkpoint)},
        chunk_ms=[20],
        backends={"onnxruntime": ["fp32"]},
        verification={"corpus": str(CORPUS), "split": "verification", "max_seconds": 10, **verification},
    )


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory):
    from pipeline import execute as executor
    from pipeline.cache import Cache
    from pipeline.manifest import load_manifest
    from pipeline.plan import plan

    tmp = tmp_path_factory.mktemp("noisy")
    graph = plan(load_manifest(_manifest(tmp)))
    return graph, executor.execute(graph, Cache(tmp / "cache"), "tiny"), tmp


def test_plan_adds_a_noisy_reference_per_chunk_and_a_noisy_verify_per_variant(tmp_path: Path, cache_dir: Path) -> None:
    from pipeline.manifest import load_manifest
    from pipeline.plan import plan

    graph = plan(load_manifest(_manifest(tmp_path)))
    noisy = graph.nodes[f"verify-noisy:{VARIANT}"]
    clean = graph.nodes[f"verify:{VARIANT}"]
    assert graph.nodes["reference-noisy@20ms"].config.data.condition == "noisy"
    assert noisy.config.data == clean.config.data.replaced(condition="noisy")
    assert dict(noisy.inputs) == dict(clean.inputs) | {"reference": "reference-noisy@20ms"}
    report = graph.nodes["report"]
    assert dict(report.inputs) == {VARIANT: f"verify:{VARIANT}", noisy_role(VARIANT): f"verify-noisy:{VARIANT}"}
    assert report.config.noisy and [v.name for v in report.config.variants] == [VARIANT]
    # what ships (build output, release bundles) is one directory per variant, never one per condition
    assert variant_inputs(report) == [(VARIANT, f"verify:{VARIANT}")]

    quiet = plan(load_manifest(_manifest(tmp_path, noisy=False)))
    assert not any("noisy" in node_id for node_id in quiet.nodes) and not quiet.nodes["report"].config.noisy
    assert dict(quiet.nodes["report"].inputs) == {VARIANT: f"verify:{VARIANT}"}
    # the clean nodes keep their keys whether or not the noisy copy is verified
    assert quiet.nodes[f"verify:{VARIANT}"].config == clean.config


def test_report_attaches_the_noisy_figures_to_the_variant(built) -> None:
    graph, artifacts, _ = built
    report = json.loads((artifacts["report"].path / REPORT_JSON).read_text())
    (variant,) = report["variants"]
    noisy = variant["noisy"]
    assert variant["passed"] and noisy["passed"] and noisy["status"] == "passed" and noisy["failures"] == []
    assert noisy["cer_vs_reference"] == 0.0 and 0 <= noisy["cer"] and noisy["audio_seconds"] == variant["audio_seconds"]
    assert set(noisy["outputs"]) == {"logits"} and noisy["outputs"]["logits"]["sqnr_db"] > 60
    assert set(noisy["states"]) == {"h_out", "c_out"}
    # the noisy copy is another stream: PyTorch transcribes it differently
    assert report["reference_noisy_cer"] == noisy["reference_cer"] != report["reference_cer"]
    markdown = (artifacts["report"].path / REPORT_MD).read_text()
    assert "## On the noisy, reverberant copy" in markdown
    assert f"| {VARIANT} | passed | {noisy['cer']:.4f} | 0.0000 | - |" in markdown
    assert f"on the noisy copy: {report['reference_noisy_cer']:.4f}" in markdown


def _run_report(graph, inputs: dict[str, Artifact], failures: dict[str, StageFailure], out: Path) -> dict:
    out.mkdir()
    ReportStage.run(graph.nodes["report"].config, inputs, out, StageContext("report", failures=failures))
    return json.loads((out / REPORT_JSON).read_text())


def test_a_variant_failing_only_on_the_noisy_copy_fails(built, tmp_path: Path) -> None:
    graph, artifacts, _ = built
    noisy_dir = tmp_path / "verify-noisy"
    shutil.copytree(artifacts[f"verify-noisy:{VARIANT}"].path, noisy_dir)
    result = json.loads((noisy_dir / RESULT_FILE).read_text())
    result |= {"passed": False, "failures": ["logits: SQNR 12.0 dB is below the bound of 20 dB"]}
    (noisy_dir / RESULT_FILE).write_text(json.dumps(result))
    inputs = {VARIANT: artifacts[f"verify:{VARIANT}"], noisy_role(VARIANT): Artifact("verify", "x", noisy_dir, "x")}
    report = _run_report(graph, inputs, {}, tmp_path / "report")
    (variant,) = report["variants"]
    assert not report["passed"] and not variant["passed"] and variant["status"] == "failed"
    assert variant["failures"] == ["noisy copy: logits: SQNR 12.0 dB is below the bound of 20 dB"]
    assert variant["noisy"]["status"] == "failed"
    markdown = (tmp_path / "report" / REPORT_MD).read_text()
    assert f"| {VARIANT} | **FAILED** |" in markdown
    assert f"- `{VARIANT}`: noisy copy: logits: SQNR 12.0 dB" in markdown


def test_a_noisy_run_failing_at_a_stage_fails_the_variant_and_says_where(built, tmp_path: Path) -> None:
    graph, artifacts, _ = built
    failure = StageFailure("reference-noisy@20ms", "reference", "toolchain", "torch ran out of memory", 3)
    skipped = StageFailure(f"verify-noisy:{VARIANT}", "verify", "skipped", failure.message, 3, cause=failure.node_id,
                           details={"cause_kind": "toolchain", "cause_stage": "reference"})
    report = _run_report(graph, {VARIANT: artifacts[f"verify:{VARIANT}"]}, {noisy_role(VARIANT): skipped}, tmp_path / "report")
    (variant,) = report["variants"]
    assert not variant["passed"] and variant["status"] == "failed"
    assert variant["noisy"]["status"] == "error" and variant["noisy"]["error"]["node"] == "reference-noisy@20ms"
    assert variant["failures"] == ["noisy copy: failed at reference-noisy@20ms: torch ran out of memory"]


def test_an_upstream_failure_is_reported_once_per_variant(built, tmp_path: Path) -> None:
    graph, _, _ = built
    root = StageFailure("simplify@20ms", "simplify", "toolchain", "onnxslim crashed", 3)

    def skipped(node_id: str) -> StageFailure:
        return StageFailure(node_id, "verify", "skipped", root.message, 3, cause=root.node_id,
                            details={"cause_kind": "toolchain", "cause_stage": "simplify"})

    failures = {VARIANT: skipped(f"verify:{VARIANT}"), noisy_role(VARIANT): skipped(f"verify-noisy:{VARIANT}")}
    report = _run_report(graph, {}, failures, tmp_path / "report")
    (variant,) = report["variants"]
    assert variant["status"] == "error" and "noisy" not in variant
    assert variant["failures"] == ["failed at simplify@20ms: onnxslim crashed"]


def test_build_output_holds_one_directory_per_variant(built, tmp_path: Path) -> None:
    from pipeline.cli import export

    graph, artifacts, _ = built
    export(graph, artifacts, "report", tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir() if p.is_dir()) == [VARIANT]
