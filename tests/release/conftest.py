"""One tiny build (a 1 x 32 LSTM on 10 s of speech) for LiteRT int8, Core ML stateful and onnxruntime, bundled once."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CORPUS, REPO, tiny_checkpoint, write_manifest

GOLDEN_STEPS = 40


@dataclass(frozen=True)
class Released:
    manifest: Path
    graph: object
    built: object
    bundle: object  # pipeline.release.bundle.Bundle
    report: dict
    out_root: Path


def _release(tmp: Path, out_root: Path, graph, built, manifest: Path):
    from pipeline.release.bundle import write_bundle

    return write_bundle(
        version="0.0.1", platform="tiny", manifest_path=manifest, graph=graph, built=built, out_root=out_root, repo=REPO,
        golden_steps=GOLDEN_STEPS,
    )


@pytest.fixture(scope="session")
def released(tmp_path_factory: pytest.TempPathFactory) -> Released:
    from pipeline import execute as executor
    from pipeline.cache import Cache
    from pipeline.manifest import load_manifest
    from pipeline.plan import plan
    from pipeline.verify.gates import BOUNDS

    tmp = tmp_path_factory.mktemp("release")
    checkpoint = tiny_checkpoint(tmp / "tiny.safetensors")
    manifest = write_manifest(
        tmp / "tiny.yaml",
        name="tiny",
        description="tiny LSTM for the release tests",
        model={"factory": "models.lstm_ctc:build", "kwargs": {"hidden": 32, "layers": 1}, "checkpoint": str(checkpoint)},
        chunk_ms=[20],
        backends={"litert": ["int8"], "coreml": ["stateful"], "onnxruntime": ["fp32"]},
        verification={"corpus": str(CORPUS), "split": "verification", "max_seconds": 10},
        calibration={"corpus": str(CORPUS), "split": "calibration", "max_samples": 200},
        # a random tiny model: these tests are about packaging, not accuracy
        tolerances={p: {**dict.fromkeys(BOUNDS), "waived": dict.fromkeys(BOUNDS, "a random tiny model; these tests check packaging")}
                    for p in ("int8", "stateful", "fp32")},
    )
    graph = plan(load_manifest(manifest))
    built = executor.execute(graph, Cache(tmp / "cache"), "tiny")
    assert not getattr(built, "failures", None), built.failures
    report = json.loads((built["report"].path / "report.json").read_text())
    assert report["passed"], [v["failures"] for v in report["variants"]]
    bundle = _release(tmp, tmp / "out", graph, built, manifest)
    return Released(manifest, graph, built, bundle, report, tmp / "out")


@pytest.fixture(scope="session")
def rerelease():
    return _release
